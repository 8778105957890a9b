#!/bin/bash
# session 27 call 2 (2x H200): call 1's kernels ($R, the working tree) with the scan backward at 32 channels
# a program under register caps 128 and 144 (v32c128, v32c144; call 1's cap 184 was slower), and v32c128 with
# the conv weight gradient's pipeline off (v32w1). tests/test_gpu.py on v32c128; the backward kernel alone
# at more caps (tune_scan_kernels.py).
R=$(pwd); mkdir -p $OUT/c2
variant() {  # name file sed-expression [base dir]
  mkdir -p /tmp/$1 && (cd ${4:-$R} && git -C $R ls-files -z | xargs -0 tar -c) | tar -x -C /tmp/$1 && sed -i "$3" /tmp/$1/$2 && diff $R/$2 /tmp/$1/$2 | grep "^>"
}
variant v32c128 selective_scan_triton.py 's/^BWD_BLOCK_E = 16 /BWD_BLOCK_E = 32 /'
variant v32c144 selective_scan_triton.py 's/^BWD_BLOCK_E = 16 /BWD_BLOCK_E = 32 /; s/^BWD_MAXNREG = 128 /BWD_MAXNREG = 144 /'
variant v32w1 depthwise_conv_triton.py 's/^WGRAD_STAGES = 2/WGRAD_STAGES = 1/' /tmp/v32c128
diff $R/selective_scan_triton.py /tmp/v32w1/selective_scan_triton.py | grep "^>"
bench() {  # dir tag
  (cd $1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$2 TRITON_CACHE_DIR=/tmp/tri_$2 timeout 170 python benchmarks/bench_train.py --device cuda \
   --sizes tiny --block_types hybrid --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/c2/bench.jsonl 2>&1 | tail -1 | sed "s/^/$2 /" >> $OUT/c2/bench.txt)
}
(export CUDA_VISIBLE_DEVICES=0; bench $R new0; bench /tmp/v32c128 v32c128_0; bench /tmp/v32c144 v32c144; bench /tmp/v32w1 v32w1_0) &
(export CUDA_VISIBLE_DEVICES=1; cd /tmp/v32c128 && TRITON_CACHE_DIR=/tmp/tri_test timeout 300 python -m pytest -q tests/test_gpu.py > $OUT/c2/test_gpu.txt 2>&1;
 head -1 $OUT/c2/test_gpu.txt; cd $R; TRITON_CACHE_DIR=/tmp/tri_tune timeout 100 python benchmarks/tune_scan_kernels.py --shapes 1024,64,2,192,16 \
   --block_e 16 32 --warps 1 --stages 1 --maxnreg 112 128 144 160 2>&1 | grep -v Warning > $OUT/c2/tune.txt;
 bench /tmp/v32c128 v32c128_1; bench /tmp/v32w1 v32w1_1; bench $R new1) &
wait; cat $OUT/c2/tune.txt; cat $OUT/c2/bench.txt
