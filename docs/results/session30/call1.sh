#!/bin/bash
# session 30 call 1 (2x H200): the conv11 lead (session 29: 95.80, 95.72% on seeds 1-2) on seeds 3 and 4,
# each alone on its GPU, whole command timed by the shell; before seed 4, GPU 1 profiles an 8-epoch run
# of the same recipe under cProfile, to find where the ~37 s outside the epochs go.
R=$(pwd); mkdir -p $OUT/c1 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
seed() {
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1 TRITON_CACHE_DIR=/tmp/tri_$1 timeout 330 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $1 --quiet --output_dir /tmp/runs/conv11_seed$1 \
   --set model.stem=conv11 > $OUT/c1/conv11_seed$1.txt 2>&1
  echo "conv11 seed $1 GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> $OUT/c1/walls.txt
}
profile() {
  local start=$(date +%s%N)
  python -c "import time; t = time.time(); import torch; a = time.time(); import train_vision_mamba; b = time.time(); torch.ones(1, device='cuda'); print(f'import torch {a - t:.2f}s, train script {b - a:.2f}s, cuda init {time.time() - b:.2f}s')" > $OUT/c1/imports.txt 2>&1
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_p TRITON_CACHE_DIR=/tmp/tri_p timeout 200 python -c "
import cProfile, pstats, sys, time
import train_vision_mamba as t
p = cProfile.Profile(); p.enable()
rc = t.main(['--config', 'fashion_mnist', '--data_dir', '/tmp/fm', '--seed', '9', '--quiet', '--output_dir', '/tmp/prof',
             '--set', 'model.stem=conv11', '--set', 'training.epochs=8', '--set', 'data.mix_off_epochs=2'])
p.disable(); end = time.time()
p.dump_stats('$OUT/c1/profile.prof')
s = pstats.Stats(p); s.sort_stats('cumulative').print_stats(70)
s.sort_stats('tottime').print_stats(30)
print('main returned', rc, 'at', end)
" > $OUT/c1/profile.txt 2>&1
  echo "profile rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms exit at $(date +%s.%N)" >> $OUT/c1/walls.txt
}
(export CUDA_VISIBLE_DEVICES=0; seed 3) &
(export CUDA_VISIBLE_DEVICES=1; profile; seed 4) &
wait
cd /tmp/runs && tar czf $OUT/c1/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/c1/walls.txt $OUT/c1/imports.txt; for f in $OUT/c1/conv11*.txt; do echo "== $f"; grep -i "params\|^test:\|nan" $f | tail -3; done
grep -m1 -B2 -A45 "Ordered by: cumulative" $OUT/c1/profile.txt | cut -c1-160
