#!/bin/bash
# session 27 call 1 (2x H200): the scan kernels with exp2 through ex2.approx.ftz and the backward's
# g_log_decay from the state before the token ($R, the working tree), against the session's starting
# commit c7bcdf0 (base). Variants of $R: new32 (the backward at 32 channels a program, register cap 184),
# wgs1 (the conv weight gradient without its 2-stage pipeline). Plus tests/test_gpu.py on $R and the
# scan kernels alone (tune_scan_kernels.py) in both trees.
R=$(pwd); mkdir -p $OUT/c1
mkdir -p /tmp/base && git archive c7bcdf0 | tar -x -C /tmp/base
variant() {  # name file sed-expression
  mkdir -p /tmp/$1 && git ls-files -z | xargs -0 tar -c | tar -x -C /tmp/$1 && sed -i "$3" /tmp/$1/$2 && diff <(cat $R/$2) /tmp/$1/$2 | head -6
}
variant new32 selective_scan_triton.py 's/^BWD_BLOCK_E = 16 /BWD_BLOCK_E = 32 /; s/^BWD_MAXNREG = 128 /BWD_MAXNREG = 184 /'
variant wgs1 depthwise_conv_triton.py 's/^WGRAD_STAGES = 2/WGRAD_STAGES = 1/'
bench() {  # dir tag
  (cd $1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$2 TRITON_CACHE_DIR=/tmp/tri_$2 timeout 170 python benchmarks/bench_train.py --device cuda \
   --sizes tiny --block_types hybrid --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/c1/bench.jsonl 2>&1 | tail -1 | sed "s/^/$2 /" >> $OUT/c1/bench.txt)
}
tune() {  # dir tag
  (cd $1 && TRITON_CACHE_DIR=/tmp/tri_t$2 timeout 120 python benchmarks/tune_scan_kernels.py --shapes 1024,64,2,192,16 \
   --block_e 16 32 64 --warps 1 --stages 1 3 --maxnreg 128 184 2>&1 | grep -v Warning | sed "s/^/$2 /" >> $OUT/c1/tune.txt)
}
(export CUDA_VISIBLE_DEVICES=0; bench /tmp/base base0; bench $R new0; bench /tmp/new32 new32; bench /tmp/wgs1 wgs1; bench /tmp/base base0b) &
(export CUDA_VISIBLE_DEVICES=1; TRITON_CACHE_DIR=/tmp/tri_test timeout 300 python -m pytest -q tests/test_gpu.py > $OUT/c1/test_gpu.txt 2>&1;
 tail -2 $OUT/c1/test_gpu.txt; tune /tmp/base base; tune $R new; bench $R new1; bench /tmp/base base1) &
wait; cat $OUT/c1/tune.txt; cat $OUT/c1/bench.txt
