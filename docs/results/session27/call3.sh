#!/bin/bash
# session 27 call 3 (2x H200): the committed code ($R) against the session's starting commit c7bcdf0 (base):
# tests/test_gpu.py, gated hybrid-tiny on each GPU, hybrid-small (MFU), the presets' ssm,attention blocks, a profile.
R=$(pwd); mkdir -p $OUT/c3
mkdir -p /tmp/base && git archive c7bcdf0 | tar -x -C /tmp/base
bench() {  # dir tag blocks [size]
  (cd $1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$2 TRITON_CACHE_DIR=/tmp/tri_$2 timeout 170 python benchmarks/bench_train.py --device cuda \
   --sizes ${4:-tiny} --block_types $3 --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/c3/bench.jsonl 2>&1 | tail -1 | sed "s/^/$2 /" >> $OUT/c3/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0; TRITON_CACHE_DIR=/tmp/tri_test timeout 280 python -m pytest -q tests/test_gpu.py -p no:cacheprovider > $OUT/c3/test_gpu.txt 2>&1
 head -1 $OUT/c3/test_gpu.txt; bench $R head0 hybrid; bench $R head_small hybrid small) &
(export CUDA_VISIBLE_DEVICES=1; bench $R head1 hybrid; bench /tmp/base base1 hybrid; bench $R head_sa ssm,attention
 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_p TRITON_CACHE_DIR=/tmp/tri_p timeout 200 python benchmarks/bench_train.py --device cuda --sizes tiny \
  --block_types hybrid --batch_sizes 1024 --steps 20 --warmup 5 --no-cudagraphs --profile > $OUT/c3/prof.txt 2>&1) &
wait; cat $OUT/c3/bench.txt; grep -B2 -A1 "GPU kernel time" $OUT/c3/prof.txt | tail -2; sed -n 4,30p $OUT/c3/prof.txt | cut -c1-70,160-200
