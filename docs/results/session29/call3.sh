#!/bin/bash
# session 29 call 3 (2x H200): the candidate fashion_mnist preset (MixUp/CutMix, 128 epochs; call 2: seeds 1-3 scored 95.12, 95.49, 95.65% sharing),
# seed 4 on GPU 0, seed 5 on GPU 1: each run alone on its GPU, with its own
# empty compile caches, the whole command timed by the shell.
R=$(pwd); mkdir -p $OUT/c3 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
seed() {
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1 TRITON_CACHE_DIR=/tmp/tri_$1 timeout 330 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $1 --quiet --output_dir /tmp/runs/seed$1 > $OUT/c3/seed$1.txt 2>&1
  echo "seed $1 GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> $OUT/c3/walls.txt
}
(export CUDA_VISIBLE_DEVICES=0; seed 4) &
(export CUDA_VISIBLE_DEVICES=1; seed 5) &
wait
cd /tmp/runs && tar czf $OUT/c3/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/c3/walls.txt; for f in $OUT/c3/seed*.txt; do echo "== $f"; grep -i "params\|^test:\|nan" $f | tail -3; done
