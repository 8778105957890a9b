#!/bin/bash
# session 30 call 2 (2x H200): cuDNN's timed choice of convolution algorithms (torch.backends.cudnn.benchmark,
# on since this commit unless training.deterministic). GPU 0: the training step of the fashion_mnist and
# cifar10 presets with it off and on (benchmarks/bench_train.py, same machine, same process settings).
# GPU 1: the conv11 lead, seed 1, alone, whole command timed (session 29, without it: 95.80% in 284.6 s).
R=$(pwd); mkdir -p $OUT/c2 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
bench() {  # config, stem, on|off
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_b$1$2$3 TRITON_CACHE_DIR=/tmp/tri_b$1$2$3 timeout 150 python benchmarks/bench_train.py \
   --config $1 --block_types ssm,attention --batch_sizes 1024 --stem $2 --$( [ $3 = on ] || echo no-)cudnn_benchmark \
   $( [ $1 = fashion_mnist ] && echo --profile ) --json $OUT/c2/bench.jsonl > $OUT/c2/bench_$1_$2_$3.txt 2>&1
  echo "bench $1 $2 cudnn_benchmark $3 rc $?" >> $OUT/c2/walls.txt
}
seed() {
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1 TRITON_CACHE_DIR=/tmp/tri_$1 timeout 330 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $1 --quiet --output_dir /tmp/runs/conv11_cudnnbench_seed$1 \
   --set model.stem=conv11 > $OUT/c2/conv11_cudnnbench_seed$1.txt 2>&1
  echo "conv11 cudnn.benchmark seed $1 GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> $OUT/c2/walls.txt
}
(export CUDA_VISIBLE_DEVICES=0; bench fashion_mnist conv9 off; bench fashion_mnist conv9 on; bench cifar10 conv5 off; bench cifar10 conv5 on) &
(export CUDA_VISIBLE_DEVICES=1; seed 1) &
wait
cd /tmp/runs && tar czf $OUT/c2/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/c2/walls.txt; grep -h "img/s" $OUT/c2/bench_*.txt; for f in $OUT/c2/conv11*.txt; do echo "== $f"; grep -i "^test:\|nan" $f | tail -2; done
