#!/bin/bash
# call 2 (2x H200): GPU 0 tests/test_gpu.py, then the step of d6c4e60 (session 21) against this tree's, gated
# tiny and the presets' alternating blocks, then the Triton grid convs; GPU 1 the cifar10 preset, seed 1.
R=$(pwd); mkdir -p $OUT/c2 /tmp/old /tmp/runs && git archive d6c4e60 | tar -x -C /tmp/old
tar xzf .devdata/cifar10-jpeg.tar.gz -C /tmp
bench() {  # tree conv blocks
  local dir=$R; [ $1 = old ] && dir=/tmp/old
  (cd $dir && VISION_MAMBA_CONV=$2 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1_$2_$3 TRITON_CACHE_DIR=/tmp/tri_$1_$2_$3 \
   python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $3 --batch_sizes 1024 --steps 40 \
   --warmup 10 --json $OUT/c2/bench.jsonl 2>&1 | tail -1 | sed "s/^/$1 $2 /" >> $OUT/c2/bench.txt)
}
cifar() {  # seed
  local start=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_c$1 TRITON_CACHE_DIR=/tmp/tri_c$1 python train_vision_mamba.py --config cifar10 \
    --set data.dataset=imagefolder --data_dir /tmp/cifar10-jpeg --seed $1 --quiet --output_dir /tmp/runs/seed$1 \
    > $OUT/c2/cifar10_seed$1.txt 2>&1
  echo "cifar10 seed $1 rc $? wall $(( $(date +%s) - start )) s" >> $OUT/c2/walls.txt
  (cd /tmp/runs && tar cf $OUT/c2/runs_seed$1.tar --exclude='*.pth' --exclude='tensorboard' seed$1)
}
(export CUDA_VISIBLE_DEVICES=1; cifar 1) &
(export CUDA_VISIBLE_DEVICES=0
 timeout 240 python -m pytest -q -rA tests/test_gpu.py > $OUT/c2/test_gpu.txt 2>&1
 bench old aten hybrid; bench new aten hybrid; bench old aten ssm,attention; bench new aten ssm,attention
 bench new triton hybrid) &
wait
cat $OUT/c2/walls.txt; cat $OUT/c2/bench.txt; grep -E "passed|failed" $OUT/c2/test_gpu.txt | tail -3
grep -i "test acc\|nan" $OUT/c2/cifar10_seed1.txt | tail -3
