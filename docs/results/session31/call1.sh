#!/bin/bash
# session 31 call 1 (2x H200): session 30's causal conv1d kernels (vision_mamba.TRITON_CAUSAL_CONV, off) on the GPU.
# GPU 0: tests/test_gpu.py (all of it: the new causal conv tests had never run on CUDA), then the training step of the
# fashion_mnist and cifar10 presets with the kernels off and on (benchmarks/bench_train.py, same GPU, same settings).
# GPU 1: the fashion_mnist preset with the kernels on, seeds 1 then 2, each alone on its GPU, whole command timed
# (session 29, off: seeds 4 and 5 in 261 s; seed 1 95.12% shared a GPU).
mkdir -p $OUT/c1 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
bench() {  # config, stem, on|off
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_b$1$2$3 TRITON_CACHE_DIR=/tmp/tri_b$1$2$3 timeout 150 python benchmarks/bench_train.py \
   --config $1 --block_types ssm,attention --batch_sizes 1024 --stem $2 --$( [ $3 = on ] || echo no-)triton_causal_conv \
   $( [ $1 = fashion_mnist ] && echo --profile ) --json $OUT/c1/bench.jsonl > $OUT/c1/bench_$1_$2_$3.txt 2>&1
  echo "bench $1 $2 triton_causal_conv $3 rc $?" >> $OUT/c1/walls.txt
}
seed() {  # the training script with vision_mamba.TRITON_CAUSAL_CONV set first
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1 TRITON_CACHE_DIR=/tmp/tri_$1 timeout 285 python -c "
import runpy, sys, vision_mamba
vision_mamba.TRITON_CAUSAL_CONV = True
sys.argv[0] = 'train_vision_mamba.py'
runpy.run_path('train_vision_mamba.py', run_name='__main__')" \
   --config fashion_mnist --data_dir /tmp/fm --seed $1 --quiet --output_dir /tmp/runs/causal_on_seed$1 > $OUT/c1/causal_on_seed$1.txt 2>&1
  echo "fashion_mnist triton_causal_conv on seed $1 GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> $OUT/c1/walls.txt
}
(export CUDA_VISIBLE_DEVICES=0; TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t TRITON_CACHE_DIR=/tmp/tri_t timeout 200 python -m pytest tests/test_gpu.py -q -rs \
   > $OUT/c1/test_gpu.txt 2>&1; echo "test_gpu rc $?" >> $OUT/c1/walls.txt
 bench fashion_mnist conv9 off; bench fashion_mnist conv9 on; bench cifar10 conv5 off; bench cifar10 conv5 on) &
(export CUDA_VISIBLE_DEVICES=1; seed 1; seed 2) &
wait
cd /tmp/runs && tar czf $OUT/c1/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/c1/walls.txt; tail -3 $OUT/c1/test_gpu.txt; grep -h "img/s" $OUT/c1/bench_*.txt | head -3; grep -h "1024" $OUT/c1/bench_*.txt
for f in $OUT/c1/causal_on*.txt; do echo "== $f"; grep -i "^test:\|nan" $f | tail -2; done
