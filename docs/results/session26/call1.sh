#!/bin/bash
# session 26 plan (2x H200), from the repo root with the tree at main: gated hybrid-tiny's step (bench_train, CUDA graphs,
# batch 1024) for main, main + s26_proj_wgrad.patch (split-K x_proj/dt_proj weight gradients), main + s26_stem_cl.patch
# (stem in channels-last), each pair on one GPU. Copy the patches into the tree first (.devdata does not travel unless carried):
#   mkdir -p docs/results/session26 && cp .devdata/exp/s26_*.patch docs/results/session26/
R=$(pwd); mkdir -p $OUT/c1
for v in proj_wgrad stem_cl; do mkdir -p /tmp/$v && git archive HEAD | tar -x -C /tmp/$v && (cd /tmp/$v && git apply $R/docs/results/session26/s26_$v.patch); done
mkdir -p /tmp/both && git archive HEAD | tar -x -C /tmp/both && (cd /tmp/both && git apply $R/docs/results/session26/s26_proj_wgrad.patch $R/docs/results/session26/s26_stem_cl.patch)
bench() {  # dir tag blocks
  (cd $1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$2_$3 TRITON_CACHE_DIR=/tmp/tri_$2_$3 timeout 150 python benchmarks/bench_train.py --device cuda \
   --sizes tiny --block_types $3 --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/c1/bench.jsonl 2>&1 | tail -1 | sed "s/^/$2 /" >> $OUT/c1/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0
 (TORCHINDUCTOR_CACHE_DIR=/tmp/ind_p TRITON_CACHE_DIR=/tmp/tri_p timeout 200 python benchmarks/bench_train.py --device cuda --sizes tiny \
  --block_types hybrid --batch_sizes 1024 --steps 20 --warmup 5 --no-cudagraphs --profile > $OUT/c1/prof_main.txt 2>&1)  # the products by shape
 bench $R main hybrid; bench /tmp/proj_wgrad proj_wgrad hybrid; bench $R main hybrid) &
(export CUDA_VISIBLE_DEVICES=1; bench /tmp/stem_cl stem_cl hybrid; bench $R main2 hybrid; bench /tmp/proj_wgrad proj_wgrad2 ssm,attention; bench /tmp/both both hybrid) &
wait; cat $OUT/c1/bench.txt; grep -A13 'matrix products' $OUT/c1/prof_main.txt
