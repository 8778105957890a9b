#!/bin/bash
# session 33's device calls 2 onward source this: the Fashion-MNIST files unpacked, and variant() to train one run
# of the fashion_mnist preset with --set overrides, then its best checkpoint on the validation split at TTA shifts 0-2
# (RUN_TIMEOUT: the run's limit in s, 450 unless set; EVAL_SHIFTS: the shifts, empty for none)
mkdir -p /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && python -c "
import glob, lzma, os, shutil
for f in glob.glob('.devdata/fmxz/*.xz'):
    with lzma.open(f) as src, open('/tmp/fm/FashionMNIST/raw/' + os.path.basename(f)[:-3], 'wb') as dst:
        shutil.copyfileobj(src, dst)"
variant() {  # name, seed, --set arguments...
  local name=$1 seed=$2; shift 2
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$name$seed TRITON_CACHE_DIR=/tmp/tri_$name$seed timeout ${RUN_TIMEOUT:-450} python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $seed --quiet "$@" --output_dir /tmp/runs/${name}_seed$seed \
   > /tmp/runs/${name}_seed$seed.txt 2>&1
  echo "fashion_mnist $name ($*) seed $seed GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> /tmp/runs/walls.txt
  for shift in ${EVAL_SHIFTS-0 1 2}; do
    python evaluate_model.py --checkpoint /tmp/runs/${name}_seed$seed/checkpoints/vision_mamba_fashion_mnist/best_model.pth \
      --output_dir /tmp/runs/${name}_seed$seed/val_shift$shift --split val --tta_shift $shift --data_dir /tmp/fm > /dev/null 2>&1
    python -c "import json; m = json.load(open('/tmp/runs/${name}_seed$seed/val_shift$shift/metrics.json')); print('$name seed $seed val shift $shift', m['accuracy'])" >> /tmp/runs/val_tta.txt
  done
}
finish() {  # $1: the call's folder under $OUT
  mkdir -p $OUT/$1 && cd /tmp/runs && tar czf $OUT/$1/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
  cat walls.txt val_tta.txt; for f in *_seed*.txt; do echo "== $f"; grep -i "^test\|nan" $f | tail -2; done
}
