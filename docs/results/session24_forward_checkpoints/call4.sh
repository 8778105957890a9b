#!/bin/bash
# call 4 (2x H200), this tree: GPU 0 the cifar10 preset, seed 1 (whole command timed); GPU 1 gated hybrid-small's
# step at batch 1024 (issue #5's MFU figure), then gated hybrid-tiny's at 512 and 768.
mkdir -p $OUT/c4 /tmp/runs && tar xzf .devdata/cifar10-jpeg.tar.gz -C /tmp
timed() {  # name command...
  local start=$(date +%s) name=$1; shift
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$name TRITON_CACHE_DIR=/tmp/tri_$name timeout 450 "$@" > $OUT/c4/$name.txt 2>&1
  echo "$name rc $? wall $(( $(date +%s) - start )) s" >> $OUT/c4/walls.txt
  [ -d /tmp/runs/$name ] && (cd /tmp/runs && tar cf $OUT/c4/runs_$name.tar --exclude='*.pth' --exclude='tensorboard' $name)
}
(export CUDA_VISIBLE_DEVICES=0
 timed cifar10_seed1 python train_vision_mamba.py --config cifar10 --set data.dataset=imagefolder --data_dir /tmp/cifar10-jpeg \
   --seed 1 --quiet --output_dir /tmp/runs/cifar10_seed1) &
(export CUDA_VISIBLE_DEVICES=1
 timed bench_small python benchmarks/bench_train.py --device cuda --sizes small --block_types hybrid --batch_sizes 1024 \
   --steps 30 --warmup 10 --json $OUT/c4/bench_small.jsonl
 timed bench_tiny python benchmarks/bench_train.py --device cuda --sizes tiny --block_types hybrid --batch_sizes 512 768 \
   --steps 40 --warmup 10 --json $OUT/c4/bench_tiny.jsonl) &
wait
cat $OUT/c4/walls.txt; grep "img/s" $OUT/c4/bench_*.txt; grep -iE "^test:|nan|diverg" $OUT/c4/cifar10_seed1.txt | tail -3
