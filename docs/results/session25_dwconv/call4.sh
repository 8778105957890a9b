#!/bin/bash
# call 4 (2x H200): the final code (VISION_MAMBA_CONV=triton the default). GPU 0: tests/test_gpu.py, then the presets'
# blocks with the Triton grid convs. GPU 1: gated hybrid-tiny's step in the other order than call 3: triton, aten, triton.
mkdir -p $OUT/c4
bench() {  # conv blocks run
  local tag=$1_$2_$3
  VISION_MAMBA_CONV=$1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$tag TRITON_CACHE_DIR=/tmp/tri_$tag \
   timeout 140 python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $2 --batch_sizes 1024 --steps 40 \
   --warmup 10 --json $OUT/c4/bench.jsonl > /tmp/b.$tag.txt 2>&1; tail -1 /tmp/b.$tag.txt | sed "s/^/$1 /" >> $OUT/c4/bench.txt
}
(export CUDA_VISIBLE_DEVICES=0
 TRITON_CACHE_DIR=/tmp/tri_t TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t timeout 200 python -m pytest -q -rA tests/test_gpu.py > $OUT/c4/test_gpu.txt 2>&1
 bench triton ssm,attention 1) &
(export CUDA_VISIBLE_DEVICES=1; bench triton hybrid 1; bench aten hybrid 1; bench triton hybrid 2) &
wait
cat $OUT/c4/bench.txt; grep -E "passed|failed|Error" $OUT/c4/test_gpu.txt | tail -5
