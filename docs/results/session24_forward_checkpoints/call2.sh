#!/bin/bash
# call 2 (2x H200): why call 1's step got slower while the kernels got faster. Each GPU first profiles gated
# hybrid-tiny's step without CUDA graphs (GPU 0 old, GPU 1 new, side by side: kernel times are the GPU's own),
# then times the step with CUDA graphs in the other order than call 1: new first, then old.
R=$(pwd); mkdir -p $OUT/c2 /tmp/old && git archive 4115ca7 | tar -x -C /tmp/old
bench() {  # tree blocks [extra flags]
  local dir=$R tag=$1_$2; [ $1 = old ] && dir=/tmp/old
  [ -n "$3" ] && tag=${tag}_profile
  (cd $dir && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$tag TRITON_CACHE_DIR=/tmp/tri_$tag \
   timeout 200 python benchmarks/bench_train.py --device cuda --sizes tiny --block_types $2 --batch_sizes 1024 --steps 40 \
   --warmup 10 $3 --json $OUT/c2/bench.jsonl > /tmp/b.$tag.txt 2>&1; tail -1 /tmp/b.$tag.txt | sed "s/^/$1 $3 /" >> $OUT/c2/bench.txt
   [ -n "$3" ] && cp /tmp/b.$tag.txt $OUT/c2/prof_$1.txt)
}
(export CUDA_VISIBLE_DEVICES=0; bench old hybrid "--no-cudagraphs --profile"; bench new hybrid; bench old hybrid) &
(export CUDA_VISIBLE_DEVICES=1; bench new hybrid "--no-cudagraphs --profile"; bench new ssm,attention; bench old ssm,attention) &
wait
cat $OUT/c2/bench.txt
for v in old new; do echo "== $v"; grep -E "scan_|copy_|convolution_backward|cudnn_conv|aten::mm |Self CUDA time|GPU kernel" $OUT/c2/prof_$v.txt | cut -c1-70,150-215; done
