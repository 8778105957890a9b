#!/bin/bash
# session 26 call 3 (2x H200), from the repo root at the commit that reverted the GELU fusion (= 46ef292 + call 1's two
# patches, with tests): it against it + s26_scan_lowp.patch (the scan backward's u, Bm, Cm gradients written in their
# inputs' dtype), alternating on GPU 0; the GPU tests of both trees on GPU 1.
R=$(pwd); mkdir -p $OUT/c3
mkdir -p /tmp/lowp && git archive HEAD | tar -x -C /tmp/lowp && (cd /tmp/lowp && git apply $R/docs/results/session26/s26_scan_lowp.patch)
bench() {  # dir tag blocks
  (cd $1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$2_$3 TRITON_CACHE_DIR=/tmp/tri_$2_$3 timeout 150 python benchmarks/bench_train.py --device cuda \
   --sizes tiny --block_types $3 --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/c3/bench.jsonl 2>&1 | tail -1 | sed "s/^/$2 /" >> $OUT/c3/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0; bench $R head hybrid; bench /tmp/lowp lowp hybrid; bench $R head hybrid; bench /tmp/lowp lowp hybrid) &
(export CUDA_VISIBLE_DEVICES=1
 timeout 260 python -m pytest -q tests/test_gpu.py -p no:cacheprovider 2>&1 | grep -v "^ \|^$" | tail -8 > $OUT/c3/test_gpu_head.txt
 cd /tmp/lowp && timeout 260 python -m pytest -q tests/test_gpu.py -p no:cacheprovider 2>&1 | grep -v "^ \|^$" | tail -8 > $OUT/c3/test_gpu_lowp.txt) &
wait; tail -3 $OUT/c3/test_gpu_*.txt; cat $OUT/c3/bench.txt
