#!/bin/bash
# session 29 call 2 (2x H200): the candidate fashion_mnist preset, MixUp 0.8 / CutMix 1.0 (off for the last 15
# epochs) over 128 epochs (call 1: 120 epochs of it reached 96.15% on validation by epoch 90, where the
# preset's other levers stopped at 95.7-95.8%), seeds 1-3, plus CutMix alone on seed 1.
# Two runs share each GPU, so compare accuracies, not times.
R=$(pwd); mkdir -p $OUT/c2 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
run() {  # name, seed, then flags
  local name=$1 seed=$2; shift 2; local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$name TRITON_CACHE_DIR=/tmp/tri_$name timeout 540 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $seed --quiet --output_dir /tmp/runs/$name "$@" > $OUT/c2/$name.txt 2>&1
  echo "$name rc $? wall $(( ($(date +%s%N) - start) / 1000000000 )) s" >> $OUT/c2/walls.txt
}
(export CUDA_VISIBLE_DEVICES=0; run seed1 1 & run seed2 2 & wait) &
(export CUDA_VISIBLE_DEVICES=1; run seed3 3 & run cutmix_seed1 1 --set data.mixup_alpha=0 & wait) &
wait
cd /tmp/runs && tar czf $OUT/c2/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/c2/walls.txt; for f in $OUT/c2/*.txt; do echo "== $f"; grep -i "^test:\|nan" $f | tail -2; done
