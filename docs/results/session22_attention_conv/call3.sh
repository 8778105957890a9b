#!/bin/bash
# call 3 (2x H200): the cifar10 preset, seed 2 on GPU 0 and seed 3 on GPU 1, each with its own empty compile cache
mkdir -p $OUT/c3 /tmp/runs && tar xzf .devdata/cifar10-jpeg.tar.gz -C /tmp
cifar() {  # seed
  local start=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_c$1 TRITON_CACHE_DIR=/tmp/tri_c$1 python train_vision_mamba.py --config cifar10 \
    --set data.dataset=imagefolder --data_dir /tmp/cifar10-jpeg --seed $1 --quiet --output_dir /tmp/runs/seed$1 \
    > $OUT/c3/cifar10_seed$1.txt 2>&1
  echo "cifar10 seed $1 rc $? wall $(( $(date +%s) - start )) s" >> $OUT/c3/walls.txt
  (cd /tmp/runs && tar cf $OUT/c3/runs_seed$1.tar --exclude='*.pth' --exclude='tensorboard' seed$1)
}
(export CUDA_VISIBLE_DEVICES=0; cifar 2) &
(export CUDA_VISIBLE_DEVICES=1; cifar 3) &
wait
cat $OUT/c3/walls.txt; for s in 2 3; do grep -i "^test:\|nan" $OUT/c3/cifar10_seed$s.txt | tail -2; done
