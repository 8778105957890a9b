#!/bin/bash
# session 33 call 1 (2x H200): Sharpness-Aware Minimization over the last 32 of the fashion_mnist preset's 128 epochs
# (--set training.sam_epochs=32, rho 0.05), seeds 5 and 6 (the preset: 95.57%, 95.81%; 232 s, 231 s alone).
# GPU 0 runs seed 5 alone (its wall time is the one to read); GPU 1 runs seed 6 beside the GPU test of SAM
# through CUDA graphs. Then each best checkpoint on the validation split at TTA shifts 0, 1 and 2.
mkdir -p $OUT/c1 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && python -c "
import glob, lzma, os, shutil
for f in glob.glob('.devdata/fmxz/*.xz'):
    with lzma.open(f) as src, open('/tmp/fm/FashionMNIST/raw/' + os.path.basename(f)[:-3], 'wb') as dst:
        shutil.copyfileobj(src, dst)"
variant() {  # name, seed, --set arguments...
  local name=$1 seed=$2; shift 2
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$name$seed TRITON_CACHE_DIR=/tmp/tri_$name$seed timeout 450 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $seed --quiet "$@" --output_dir /tmp/runs/${name}_seed$seed \
   > /tmp/runs/${name}_seed$seed.txt 2>&1
  echo "fashion_mnist $name ($*) seed $seed GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> /tmp/runs/walls.txt
  for shift in 0 1 2; do
    python evaluate_model.py --checkpoint /tmp/runs/${name}_seed$seed/checkpoints/vision_mamba_fashion_mnist/best_model.pth \
      --output_dir /tmp/runs/${name}_seed$seed/val_shift$shift --split val --tta_shift $shift --data_dir /tmp/fm > /dev/null 2>&1
    python -c "import json; m = json.load(open('/tmp/runs/${name}_seed$seed/val_shift$shift/metrics.json')); print('$name seed $seed val shift $shift', m['accuracy'])" >> /tmp/runs/val_tta.txt
  done
}
(export CUDA_VISIBLE_DEVICES=1; TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t TRITON_CACHE_DIR=/tmp/tri_t timeout 400 \
   python -m pytest tests/test_gpu.py -rs -k "cuda_graphs_follows" > /tmp/runs/test_gpu.txt 2>&1; echo "test_gpu rc $?" >> /tmp/runs/walls.txt) &
(export CUDA_VISIBLE_DEVICES=0; variant sam32 5 --set training.sam_epochs=32) &
(export CUDA_VISIBLE_DEVICES=1; variant sam32 6 --set training.sam_epochs=32) &
wait
cd /tmp/runs && tar czf $OUT/c1/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat walls.txt val_tta.txt; tail -3 test_gpu.txt; for f in *_seed*.txt; do echo "== $f"; grep -i "^test\|nan" $f | tail -2; done
