#!/bin/bash
# call 3 (2x H200): the scan operators with 3-d tensors (no channels-last copies), against session 23's end
# (old = 4115ca7), each also with inductor's layout optimisation off (TORCHINDUCTOR_LAYOUT_OPTIMIZATION=0).
# GPU 0 gated hybrid-tiny; GPU 1 tests/test_gpu.py, then the presets' blocks (the old code with layout optimisation
# off only for gated hybrid-tiny).
R=$(pwd); mkdir -p $OUT/c3 /tmp/old && git archive 4115ca7 | tar -x -C /tmp/old
bench() {  # tree blocks layout_opt
  local dir=$R tag=$1_$2_lo$3; [ $1 = old ] && dir=/tmp/old
  (cd $dir && TORCHINDUCTOR_LAYOUT_OPTIMIZATION=$3 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$tag TRITON_CACHE_DIR=/tmp/tri_$tag \
   timeout 200 python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $2 --batch_sizes 1024 --steps 40 \
   --warmup 10 --json $OUT/c3/bench_lo$3.jsonl 2>&1 | tail -1 | sed "s/^/$1 layout_opt=$3 /" >> $OUT/c3/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0; bench new hybrid 1; bench new hybrid 0; bench old hybrid 1; bench old hybrid 0) &
(export CUDA_VISIBLE_DEVICES=1
 TRITON_CACHE_DIR=/tmp/tri_t TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t timeout 240 python -m pytest -q -rA -x tests/test_gpu.py > $OUT/c3/test_gpu.txt 2>&1
 bench new ssm,attention 1; bench new ssm,attention 0; bench old ssm,attention 1) &
wait
cat $OUT/c3/bench.txt; grep -E "passed|failed|Error" $OUT/c3/test_gpu.txt | tail -5
