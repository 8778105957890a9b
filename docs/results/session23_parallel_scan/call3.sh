#!/bin/bash
# call 3 (2x H200), commit a416ecb: issue #6's ablation at today's cifar10 preset, more seeds. GPU 0 SSM blocks only,
# seed 2 (alone); GPU 1 attention blocks only, seeds 2 and 3 side by side (their wall times are not times alone).
mkdir -p $OUT/c3 /tmp/runs && tar xzf .devdata/cifar10-jpeg.tar.gz -C /tmp
cifar() {  # blocks seed
  local start=$(date +%s) name=$1_seed$2
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$name TRITON_CACHE_DIR=/tmp/tri_$name timeout 570 python train_vision_mamba.py \
    --config cifar10 --set data.dataset=imagefolder --data_dir /tmp/cifar10-jpeg --seed $2 --quiet \
    --set model.block_type=$1 --output_dir /tmp/runs/$name > $OUT/c3/$name.txt 2>&1
  echo "cifar10 $1 seed $2 rc $? wall $(( $(date +%s) - start )) s" >> $OUT/c3/walls.txt
  (cd /tmp/runs && tar cf $OUT/c3/runs_$name.tar --exclude='*.pth' --exclude='tensorboard' $name)
}
(export CUDA_VISIBLE_DEVICES=0; cifar ssm 2) &
(export CUDA_VISIBLE_DEVICES=1; cifar attention 2 & cifar attention 3 & wait) &
wait
cat $OUT/c3/walls.txt; grep -h "^test" $OUT/c3/*.txt; grep -il nan $OUT/c3/*.txt
