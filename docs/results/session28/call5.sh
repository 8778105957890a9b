#!/bin/bash
# session 28 call 5 (2x H200): the new fashion_mnist preset at 96 epochs (call 4: seed 1 scored 95.52% sharing a GPU),
# seed 2 on GPU 0, seed 3 on GPU 1: each run alone on its GPU, with its own
# empty compile caches, the whole command timed by the shell.
R=$(pwd); mkdir -p $OUT/c5 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
seed() {
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1 TRITON_CACHE_DIR=/tmp/tri_$1 timeout 220 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $1 --epochs 96 --quiet --output_dir /tmp/runs/seed$1 > $OUT/c5/seed$1.txt 2>&1
  echo "seed $1 GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> $OUT/c5/walls.txt
}
(export CUDA_VISIBLE_DEVICES=0; seed 2) &
(export CUDA_VISIBLE_DEVICES=1; seed 3) &
wait
cd /tmp/runs && tar czf $OUT/c5/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/c5/walls.txt; for f in $OUT/c5/seed*.txt; do echo "== $f"; grep -i "params\|^test:\|nan" $f | tail -3; done
