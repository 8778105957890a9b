#!/bin/bash
# session 27 call 4 (2x H200): the committed code ($R) again on each GPU, against two variants of its grid convs:
# fw8 (the forward and input-gradient kernel at 8 warps: ptxas of Triton 3.8 gives it 165 registers instead of 235)
# and fw8pps4 (the same with the weight gradient's programs at 4 an SM instead of 8).
R=$(pwd); mkdir -p $OUT/c4
variant() {  # name file sed-expression [base dir]
  mkdir -p /tmp/$1 && (cd ${4:-$R} && git -C $R ls-files -z | xargs -0 tar -c) | tar -x -C /tmp/$1 && sed -i "$3" /tmp/$1/$2 && diff $R/$2 /tmp/$1/$2 | grep "^>"
}
variant fw8 depthwise_conv_triton.py 's/^NUM_WARPS = 4/NUM_WARPS = 8/'
variant fw8pps4 depthwise_conv_triton.py 's/^WGRAD_PROGRAMS_PER_SM = 8/WGRAD_PROGRAMS_PER_SM = 4/' /tmp/fw8
bench() {  # dir tag
  (cd $1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$2 TRITON_CACHE_DIR=/tmp/tri_$2 timeout 120 python benchmarks/bench_train.py --device cuda \
   --sizes tiny --block_types hybrid --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/c4/bench.jsonl 2>&1 | tail -1 | sed "s/^/$2 /" >> $OUT/c4/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0; bench $R head0; bench /tmp/fw8 fw8_0; bench /tmp/fw8pps4 fw8pps4_0) &
(export CUDA_VISIBLE_DEVICES=1; bench /tmp/fw8 fw8_1; bench $R head1; bench /tmp/fw8pps4 fw8pps4_1) &
wait; cat $OUT/c4/bench.txt
