#!/bin/bash
# session 26 call 4 (2x H200): the depthwise conv's weight-gradient launch, variants against HEAD on each GPU:
# programs per SM 4 and 16 (GPU 0), 2 and 64 channels -> 32 channels a program (GPU 1); HEAD has 8 and 64.
R=$(pwd); mkdir -p $OUT/c4
variant() {  # name sed-expression
  mkdir -p /tmp/$1 && git archive HEAD | tar -x -C /tmp/$1 && sed -i "$2" /tmp/$1/depthwise_conv_triton.py && grep -c "^WGRAD" /tmp/$1/depthwise_conv_triton.py
}
variant pps4 's/^WGRAD_PROGRAMS_PER_SM = 8/WGRAD_PROGRAMS_PER_SM = 4/'; variant pps16 's/^WGRAD_PROGRAMS_PER_SM = 8/WGRAD_PROGRAMS_PER_SM = 16/'
variant pps2 's/^WGRAD_PROGRAMS_PER_SM = 8/WGRAD_PROGRAMS_PER_SM = 2/'; variant bc32 's/^WGRAD_BLOCK_C = 64/WGRAD_BLOCK_C = 32/'
diff <(git show HEAD:depthwise_conv_triton.py) /tmp/bc32/depthwise_conv_triton.py
bench() {  # dir tag
  (cd $1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$2 TRITON_CACHE_DIR=/tmp/tri_$2 timeout 150 python benchmarks/bench_train.py --device cuda \
   --sizes tiny --block_types hybrid --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/c4/bench.jsonl 2>&1 | tail -1 | sed "s/^/$2 /" >> $OUT/c4/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0; bench $R head0; bench /tmp/pps4 pps4; bench /tmp/pps16 pps16) &
(export CUDA_VISIBLE_DEVICES=1; bench $R head1; bench /tmp/pps2 pps2; bench /tmp/bc32 bc32) &
wait; cat $OUT/c4/bench.txt
