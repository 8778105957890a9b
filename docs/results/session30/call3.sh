#!/bin/bash
# session 30 call 3 (2x H200): the fashion_mnist preset with 2% of the training set held out for validation
# instead of 10% (data.val_fraction=0.02, as the cifar10 preset: 58,800 training images instead of 54,000),
# seeds 1-4, against the preset's 95.12, 95.49, 95.65, 95.48% on the same seeds (session 29).
# Two runs share each GPU, so compare accuracies, not times.
R=$(pwd); mkdir -p $OUT/c3 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
run() {  # name, seed, then flags
  local name=$1 seed=$2; shift 2; local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$name TRITON_CACHE_DIR=/tmp/tri_$name timeout 560 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $seed --quiet --output_dir /tmp/runs/$name "$@" > $OUT/c3/$name.txt 2>&1
  echo "$name rc $? wall $(( ($(date +%s%N) - start) / 1000000000 )) s" >> $OUT/c3/walls.txt
}
V="--set data.val_fraction=0.02"
(export CUDA_VISIBLE_DEVICES=0; run val2_seed1 1 $V & run val2_seed2 2 $V & wait) &
(export CUDA_VISIBLE_DEVICES=1; run val2_seed3 3 $V & run val2_seed4 4 $V & wait) &
wait
cd /tmp/runs && tar czf $OUT/c3/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/c3/walls.txt; for f in $OUT/c3/*.txt; do echo "== $f"; grep -i "^test:\|nan" $f | tail -2; done
