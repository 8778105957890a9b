#!/bin/bash
# session 26 call 2 (2x H200), from the repo root at 0e2448c: that commit (GELU fused into the ConvFFN's Triton conv,
# split-K projection weight gradients, channels-last stem) against 46ef292 + call 1's two patches (no GELU fusion), both
# on GPU 0 with a profile first; GPU 1: the GPU tests, PROJECTION_WGRAD_SPLITS=64, the presets' blocks, hybrid-small.
R=$(pwd); mkdir -p $OUT/c2
mkdir -p /tmp/both && git archive 46ef292 | tar -x -C /tmp/both && (cd /tmp/both && git apply $R/docs/results/session26/s26_proj_wgrad.patch $R/docs/results/session26/s26_stem_cl.patch)
mkdir -p /tmp/split64 && git archive HEAD | tar -x -C /tmp/split64 && sed -i 's/^PROJECTION_WGRAD_SPLITS = 16/PROJECTION_WGRAD_SPLITS = 64/' /tmp/split64/vision_mamba.py
grep -c "PROJECTION_WGRAD_SPLITS = 64" /tmp/split64/vision_mamba.py
bench() {  # dir tag blocks size
  (cd $1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$2_$3 TRITON_CACHE_DIR=/tmp/tri_$2_$3 timeout 150 python benchmarks/bench_train.py --device cuda \
   --sizes ${4:-tiny} --block_types $3 --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/c2/bench.jsonl 2>&1 | tail -1 | sed "s/^/$2 /" >> $OUT/c2/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0
 (TORCHINDUCTOR_CACHE_DIR=/tmp/ind_p TRITON_CACHE_DIR=/tmp/tri_p timeout 200 python benchmarks/bench_train.py --device cuda --sizes tiny \
  --block_types hybrid --batch_sizes 1024 --steps 20 --warmup 5 --no-cudagraphs --profile > $OUT/c2/prof_new.txt 2>&1)
 bench $R new hybrid; bench /tmp/both both hybrid; bench $R new hybrid) &
(export CUDA_VISIBLE_DEVICES=1
 timeout 260 python -m pytest -q tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -15 > $OUT/c2/test_gpu.txt
 bench /tmp/split64 split64 hybrid; bench $R new ssm,attention; bench $R new_small hybrid small) &
wait; cat $OUT/c2/test_gpu.txt | tail -3; cat $OUT/c2/bench.txt; grep -A8 'matrix products' $OUT/c2/prof_new.txt; sed -n 4,40p $OUT/c2/prof_new.txt | cut -c1-70,160-200
