#!/bin/bash
# call 2 (2x H200): the Triton grid conv with the per-pixel-row backward (call 1's tile backward lost to cuDNN).
# GPU 0: micro.py (launch shapes), then gated hybrid-tiny's step profiled without CUDA graphs with the Triton conv.
# GPU 1: the conv's GPU tests, then the cifar10 preset's step with CUDA graphs, batch 1024, VISION_MAMBA_CONV
#        aten then triton, gated hybrid-tiny and the presets' blocks.
mkdir -p $OUT/c2
bench() {  # conv blocks [extra flags]
  local tag=$1_$2; [ -n "$3" ] && tag=${tag}_profile
  VISION_MAMBA_CONV=$1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$tag TRITON_CACHE_DIR=/tmp/tri_$tag \
   timeout 220 python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $2 --batch_sizes 1024 --steps 40 \
   --warmup 10 $3 --json $OUT/c2/bench.jsonl > /tmp/b.$tag.txt 2>&1; tail -1 /tmp/b.$tag.txt | sed "s/^/$1 $3 /" >> $OUT/c2/bench.txt
  [ -n "$3" ] && cp /tmp/b.$tag.txt $OUT/c2/prof_$1.txt
}
(export CUDA_VISIBLE_DEVICES=0; TRITON_CACHE_DIR=/tmp/tri_m timeout 330 python docs/results/session25_dwconv/micro.py > $OUT/c2/micro.txt 2>&1
 bench triton hybrid "--no-cudagraphs --profile") &
(export CUDA_VISIBLE_DEVICES=1
 TRITON_CACHE_DIR=/tmp/tri_t TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t timeout 200 python -m pytest -q -rA -x tests/test_gpu.py -k conv > $OUT/c2/test_gpu.txt 2>&1
 bench triton hybrid; bench aten hybrid; bench triton ssm,attention; bench aten ssm,attention) &
wait
grep -v Warn $OUT/c2/micro.txt | tail -50; cat $OUT/c2/bench.txt
grep -E "dwconv|scan_|copy_|convolution_backward|cudnn_conv|aten::mm |Self CUDA time" $OUT/c2/prof_triton.txt | cut -c1-70,150-215
grep -E "passed|failed|Error" $OUT/c2/test_gpu.txt | tail -5
