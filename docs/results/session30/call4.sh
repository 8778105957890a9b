#!/bin/bash
# session 30 call 4 (2x H200), with the session's last ~500 s of device time: the cifar10 preset with today's
# code (sessions 25-30 changed kernels, the stem's memory layout, the projections' weight gradients and
# cuDNN's algorithm choice since its last run, session 24: 92.53% in 368 s), seeds 1 and 2, each alone on
# its GPU with its own empty compile cache, the whole command timed by the shell.
mkdir -p $OUT/c4 /tmp/runs && tar xzf .devdata/cifar10-jpeg.tar.gz -C /tmp
cifar() {  # seed
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_c$1 TRITON_CACHE_DIR=/tmp/tri_c$1 timeout 440 python train_vision_mamba.py --config cifar10 \
    --set data.dataset=imagefolder --data_dir /tmp/cifar10-jpeg --seed $1 --quiet --output_dir /tmp/runs/seed$1 \
    > $OUT/c4/cifar10_seed$1.txt 2>&1
  echo "cifar10 seed $1 GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> $OUT/c4/walls.txt
  (cd /tmp/runs && tar cf $OUT/c4/runs_seed$1.tar --exclude='*.pth' --exclude='tensorboard' seed$1)
}
(export CUDA_VISIBLE_DEVICES=0; cifar 1) &
(export CUDA_VISIBLE_DEVICES=1; cifar 2) &
wait
cat $OUT/c4/walls.txt; for s in 1 2; do grep -i "params\|^test:\|nan" $OUT/c4/cifar10_seed$s.txt | tail -3; done
