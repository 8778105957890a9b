#!/bin/bash
# session 29 call 4 (2x H200), with the session's last 380 s of device time: the new fashion_mnist preset
# (MixUp/CutMix, 128 epochs) with the deeper conv11 stem, seeds 1 and 2, each alone on its GPU: does the
# deeper stem add to the mixing, and does it still fit in 5 minutes?
R=$(pwd); mkdir -p $OUT/c4 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
seed() {
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1 TRITON_CACHE_DIR=/tmp/tri_$1 timeout 295 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $1 --quiet --output_dir /tmp/runs/conv11_seed$1 \
   --set model.stem=conv11 > $OUT/c4/conv11_seed$1.txt 2>&1
  echo "conv11 seed $1 GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> $OUT/c4/walls.txt
}
(export CUDA_VISIBLE_DEVICES=0; seed 1) &
(export CUDA_VISIBLE_DEVICES=1; seed 2) &
wait
cd /tmp/runs && tar czf $OUT/c4/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/c4/walls.txt; for f in $OUT/c4/conv11*.txt; do echo "== $f"; grep -i "^test:\|nan" $f | tail -2; done
