#!/bin/bash
# call A: micro-benchmarks, GPU tests, bench_train old (9fe9d8d) vs new, one H200
set -x
R=$(pwd); mkdir -p $OUT/a
cd $R/.devdata/exp && TRITON_CACHE_DIR=/tmp/tcm python micro.py sst_chunk2 sst_hoist > $OUT/a/micro.txt 2>&1
cd $R && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t TRITON_CACHE_DIR=/tmp/tri_t timeout 240 python -m pytest -q tests/test_gpu.py > $OUT/a/test_gpu.txt 2>&1
mkdir -p /tmp/old && git archive 9fe9d8d | tar -x -C /tmp/old
for spec in "tiny hybrid" "tiny ssm,attention"; do set -- $spec
  for tree in old new; do
    dir=$R; [ $tree = old ] && dir=/tmp/old
    (cd $dir && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_${tree}_$1_$2 TRITON_CACHE_DIR=/tmp/tri_${tree}_$1_$2 python benchmarks/bench_train.py --device cuda --sizes $1 --block_types $2 --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/a/bench_$tree.jsonl 2>&1 | tail -1 | sed "s/^/$tree /")
  done
done
TORCHINDUCTOR_CACHE_DIR=/tmp/ind_s TRITON_CACHE_DIR=/tmp/tri_s python benchmarks/bench_train.py --device cuda --sizes small --block_types hybrid --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/a/bench_new.jsonl 2>&1 | tail -1 | sed "s/^/new /"
tail -3 $OUT/a/test_gpu.txt
