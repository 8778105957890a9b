#!/bin/bash
# session 32 call 2 (2x H200): four more levers on the fashion_mnist preset (conv11, 128 epochs; seed 5: 95.57%
# alone, seed 6: 95.81%). Call 1's screen (drop path 0.2, erasing 0.5, weight decay 0.1, lr 2e-3) scored
# 95.46-95.65% on seed 5, all within the seeds' spread; drop path 0.2 was highest, so it runs on seed 6 here.
# The others: no label smoothing (MixUp/CutMix already soften the targets), the conv15 stem (a third residual pair
# at 28x28 and at 14x14: the stem holds most of the model's compute), 8 token blocks instead of 6.
# Two runs share each GPU: compare the accuracies, not the times.
mkdir -p $OUT/c2 /tmp/runs
# the idx files carried xz-compressed (.devdata/fmxz): with the gzip copies the tree passed the 64 MiB a call carries
mkdir -p /tmp/fm/FashionMNIST/raw && python -c "
import glob, lzma, os, shutil
for f in glob.glob('.devdata/fmxz/*.xz'):
    with lzma.open(f) as src, open('/tmp/fm/FashionMNIST/raw/' + os.path.basename(f)[:-3], 'wb') as dst:
        shutil.copyfileobj(src, dst)"
variant() {  # name, seed, --set arguments...
  local name=$1 seed=$2; shift 2
  local start=$(date +%s%N)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$name$seed TRITON_CACHE_DIR=/tmp/tri_$name$seed timeout 560 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed $seed --quiet "$@" --output_dir /tmp/runs/${name}_seed$seed \
   > /tmp/runs/${name}_seed$seed.txt 2>&1
  echo "fashion_mnist $name ($*) seed $seed GPU $CUDA_VISIBLE_DEVICES rc $? wall $(( ($(date +%s%N) - start) / 1000000 )) ms" >> /tmp/runs/walls.txt
}
(export CUDA_VISIBLE_DEVICES=0; variant ls0 5 --set training.label_smoothing=0.0) &
(export CUDA_VISIBLE_DEVICES=0; variant conv15 5 --set model.stem=conv15) &
(export CUDA_VISIBLE_DEVICES=1; variant depth8 5 --set model.depth=8) &
(export CUDA_VISIBLE_DEVICES=1; variant dp02 6 --set model.drop_path=0.2) &
wait
cd /tmp/runs && tar czf $OUT/c2/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat walls.txt; for f in *_seed*.txt; do echo "== $f"; grep -i "^test:\|nan" $f | tail -2; done
