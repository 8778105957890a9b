#!/bin/bash
# call 1 (2x H200): the Triton grid conv (depthwise_conv_triton.py) against cuDNN.
# GPU 0: micro.py (one conv, several launch shapes), then gated hybrid-tiny's step profiled without CUDA graphs
#        with the Triton conv. GPU 1: the cifar10 preset's step with CUDA graphs, batch 1024, VISION_MAMBA_CONV
#        aten then triton, gated hybrid-tiny and the presets' blocks.
mkdir -p $OUT/c1
bench() {  # conv blocks [extra flags]
  local tag=$1_$2; [ -n "$3" ] && tag=${tag}_profile
  VISION_MAMBA_CONV=$1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$tag TRITON_CACHE_DIR=/tmp/tri_$tag \
   timeout 220 python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $2 --batch_sizes 1024 --steps 40 \
   --warmup 10 $3 --json $OUT/c1/bench.jsonl > /tmp/b.$tag.txt 2>&1; tail -1 /tmp/b.$tag.txt | sed "s/^/$1 $3 /" >> $OUT/c1/bench.txt
  [ -n "$3" ] && cp /tmp/b.$tag.txt $OUT/c1/prof_$1.txt
}
(export CUDA_VISIBLE_DEVICES=0; TRITON_CACHE_DIR=/tmp/tri_m timeout 300 python docs/results/session25_dwconv/micro.py > $OUT/c1/micro.txt 2>&1
 bench triton hybrid "--no-cudagraphs --profile") &
(export CUDA_VISIBLE_DEVICES=1; bench aten hybrid; bench triton hybrid; bench triton ssm,attention; bench aten ssm,attention) &
wait
cat $OUT/c1/micro.txt | tail -60; cat $OUT/c1/bench.txt
grep -E "dwconv|scan_|copy_|convolution_backward|cudnn_conv|aten::mm |Self CUDA time" $OUT/c1/prof_triton.txt | cut -c1-70,150-215
