#!/bin/bash
# call 1 (2x H200): GPU 0 tests/test_gpu.py, micro.py, then the gated tiny step; GPU 1 the presets' alternating
# step. Each GPU times commit d6c4e60 (session 21) and this tree with each conv backend, one after another.
R=$(pwd); mkdir -p $OUT/c1 /tmp/old && git archive d6c4e60 | tar -x -C /tmp/old
bench() {  # tree conv blocks
  local dir=$R; [ $1 = old ] && dir=/tmp/old
  (cd $dir && VISION_MAMBA_CONV=$2 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1_$2_$3 TRITON_CACHE_DIR=/tmp/tri_$1_$2_$3 \
   python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $3 --batch_sizes 1024 --steps 40 \
   --warmup 10 --json $OUT/c1/bench.jsonl 2>&1 | tail -1 | sed "s/^/$1 $2 /" >> $OUT/c1/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0
 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t TRITON_CACHE_DIR=/tmp/tri_t timeout 270 python -m pytest -q tests/test_gpu.py > $OUT/c1/test_gpu.txt 2>&1
 TRITON_CACHE_DIR=/tmp/tri_m python docs/results/session22_attention_conv/micro.py > $OUT/c1/micro.txt 2>&1
 bench old aten hybrid; bench new aten hybrid) &
(export CUDA_VISIBLE_DEVICES=1
 bench old aten ssm,attention; bench new aten ssm,attention; bench new triton ssm,attention
 bench new shifts ssm,attention; bench new triton hybrid) &
wait
cat $OUT/c1/micro.txt; cat $OUT/c1/bench.txt; tail -3 $OUT/c1/test_gpu.txt
