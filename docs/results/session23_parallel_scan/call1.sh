#!/bin/bash
# call 1 (2x H200): GPU 0 the kernel micro-benchmark, then the presets' step old/new; GPU 1 tests/test_gpu.py,
# then the gated hybrid-tiny step old/new. old = commit 745e85a (session 22's end), new = this tree.
R=$(pwd); mkdir -p $OUT/c1 /tmp/old && git archive 745e85a | tar -x -C /tmp/old
bench() {  # tree blocks
  local dir=$R; [ $1 = old ] && dir=/tmp/old
  (cd $dir && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1_$2 TRITON_CACHE_DIR=/tmp/tri_$1_$2 \
   timeout 200 python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $2 --batch_sizes 1024 --steps 40 \
   --warmup 10 --json $OUT/c1/bench.jsonl 2>&1 | tail -1 | sed "s/^/$1 /" >> $OUT/c1/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0
 TRITON_CACHE_DIR=/tmp/tri_micro timeout 300 python docs/results/session23_parallel_scan/micro.py $OUT/c1/micro.jsonl > $OUT/c1/micro.txt 2>&1
 bench old ssm,attention; bench new ssm,attention) &
(export CUDA_VISIBLE_DEVICES=1
 TRITON_CACHE_DIR=/tmp/tri_t TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t timeout 240 python -m pytest -q -rA -x tests/test_gpu.py > $OUT/c1/test_gpu.txt 2>&1
 bench old hybrid; bench new hybrid) &
wait
cat $OUT/c1/micro.txt | cut -c1-110; cat $OUT/c1/bench.txt; grep -E "passed|failed|Error" $OUT/c1/test_gpu.txt | tail -5
