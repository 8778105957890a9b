#!/bin/bash
# call 1 (2x H200): GPU 0 the kernel micro-benchmark, then gated hybrid-tiny's step old / new / new with
# VISION_MAMBA_CONV=shifts; GPU 1 tests/test_gpu.py, then the presets' step the same three ways.
# old = commit 4115ca7 (session 23's end), new = this tree.
R=$(pwd); mkdir -p $OUT/c1 /tmp/old && git archive 4115ca7 | tar -x -C /tmp/old
bench() {  # tree blocks [conv backend]
  local dir=$R tag=$1; [ $1 = old ] && dir=/tmp/old
  [ -n "$3" ] && tag=$1_$3
  (cd $dir && VISION_MAMBA_CONV=${3:-aten} TORCHINDUCTOR_CACHE_DIR=/tmp/ind_${tag}_$2 TRITON_CACHE_DIR=/tmp/tri_${tag}_$2 \
   timeout 200 python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $2 --batch_sizes 1024 --steps 40 \
   --warmup 10 --json $OUT/c1/bench_$tag.jsonl 2>&1 | tail -1 | sed "s/^/$tag /" >> $OUT/c1/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0
 TRITON_CACHE_DIR=/tmp/tri_micro timeout 300 python docs/results/session24_forward_checkpoints/micro.py 4115ca7 $OUT/c1/micro.jsonl > $OUT/c1/micro.txt 2>&1
 bench old hybrid; bench new hybrid; bench new hybrid shifts) &
(export CUDA_VISIBLE_DEVICES=1
 TRITON_CACHE_DIR=/tmp/tri_t TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t timeout 240 python -m pytest -q -rA -x tests/test_gpu.py > $OUT/c1/test_gpu.txt 2>&1
 bench old ssm,attention; bench new ssm,attention; bench new ssm,attention shifts) &
wait
tail -6 $OUT/c1/micro.txt | cut -c1-120; cat $OUT/c1/bench.txt; grep -E "passed|failed|Error" $OUT/c1/test_gpu.txt | tail -5
