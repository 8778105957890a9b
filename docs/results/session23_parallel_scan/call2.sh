#!/bin/bash
# call 2 (2x H200), commit a416ecb: GPU 0 profiles of today's step (gated hybrid-tiny, the presets' blocks), then the
# cifar10 preset with attention blocks only; GPU 1 the cifar10 preset with SSM blocks only (issue #6's ablation).
mkdir -p $OUT/c2 /tmp/runs && tar xzf .devdata/cifar10-jpeg.tar.gz -C /tmp
prof() {  # blocks
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_p$1 TRITON_CACHE_DIR=/tmp/tri_p$1 timeout 200 python benchmarks/bench_train.py \
    --device cuda --sizes tiny --block_types $1 --batch_sizes 1024 --steps 20 --warmup 5 --no-cudagraphs --profile \
    > $OUT/c2/prof_$1.txt 2>&1
}
cifar() {  # blocks
  local start=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_c$1 TRITON_CACHE_DIR=/tmp/tri_c$1 timeout 560 python train_vision_mamba.py --config cifar10 \
    --set data.dataset=imagefolder --data_dir /tmp/cifar10-jpeg --seed 1 --quiet --set model.block_type=$1 \
    --output_dir /tmp/runs/$1 > $OUT/c2/cifar10_$1.txt 2>&1
  echo "cifar10 $1 seed 1 rc $? wall $(( $(date +%s) - start )) s" >> $OUT/c2/walls.txt
  (cd /tmp/runs && tar cf $OUT/c2/runs_$1.tar --exclude='*.pth' --exclude='tensorboard' $1)
}
(export CUDA_VISIBLE_DEVICES=0; prof hybrid; prof ssm,attention; cifar attention) &
(export CUDA_VISIBLE_DEVICES=1; cifar ssm) &
wait
cat $OUT/c2/walls.txt; tail -1 $OUT/c2/prof_*.txt; grep -h "GPU kernel time" $OUT/c2/prof_*.txt
grep -ih "test acc\|nan" $OUT/c2/cifar10_*.txt | tail -6
