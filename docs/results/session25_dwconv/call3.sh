#!/bin/bash
# call 3 (2x H200): the Triton grid conv, its backward as the mirrored forward kernel plus a weight-gradient kernel
# GPU 0: micro.py (launch shapes), then gated hybrid-tiny's step profiled without CUDA graphs with the Triton conv.
# GPU 1: the conv tests, then the cifar10 preset's step with CUDA graphs, batch 1024, VISION_MAMBA_CONV
#        aten then triton, gated hybrid-tiny and the presets' blocks.
mkdir -p $OUT/c3
bench() {  # conv blocks [extra flags]; VISION_MAMBA_DWCONV_BWD from the environment
  local tag=$1_$2_${VISION_MAMBA_DWCONV_BWD}; [ -n "$3" ] && tag=${tag}_profile
  VISION_MAMBA_CONV=$1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$tag TRITON_CACHE_DIR=/tmp/tri_$tag \
   timeout 150 python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $2 --batch_sizes 1024 --steps 40 \
   --warmup 10 $3 --json $OUT/c3/bench.jsonl > /tmp/b.$tag.txt 2>&1; tail -1 /tmp/b.$tag.txt | sed "s/^/$1 bwd=$VISION_MAMBA_DWCONV_BWD $3 /" >> $OUT/c3/bench.txt
  [ -n "$3" ] && cp /tmp/b.$tag.txt $OUT/c3/prof_$1.txt
}
(export CUDA_VISIBLE_DEVICES=0; TRITON_CACHE_DIR=/tmp/tri_m timeout 300 python docs/results/session25_dwconv/micro.py > $OUT/c3/micro.txt 2>&1
 VISION_MAMBA_DWCONV_BWD=triton bench triton hybrid "--no-cudagraphs --profile") &
(export CUDA_VISIBLE_DEVICES=1
 TRITON_CACHE_DIR=/tmp/tri_t TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t timeout 200 python -m pytest -q -rA -x tests/test_gpu.py -k "conv and not shifts" > $OUT/c3/test_gpu.txt 2>&1
 bench aten hybrid; for m in triton cudnn_wgrad cudnn; do VISION_MAMBA_DWCONV_BWD=$m bench triton hybrid; done
 bench triton ssm,attention) &
wait
grep -v Warn $OUT/c3/micro.txt | tail -33; cat $OUT/c3/bench.txt
grep -E "dwconv|scan_|copy_|convolution_backward|cudnn_conv|aten::mm |Self CUDA time" $OUT/c3/prof_triton.txt | cut -c1-70,150-215
grep -E "passed|failed|Error" $OUT/c3/test_gpu.txt | tail -5
