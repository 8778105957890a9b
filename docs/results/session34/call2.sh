#!/bin/bash
# session 34 call 2 (2x H200): finer detail for the blocks, each run alone on its GPU, seed 5 (the preset: 95.57%, 232 s):
# GPU 0: 14x14 tokens (model.patch_size=2: the stem's 1x1 projection instead of 2x2 stride 2; 196 tokens) in 4 blocks;
# GPU 1: the images resized to 32x32 (data.img_size=32: the stem at 32 and 16, 64 tokens).
# Both about 1.3x the preset's multiply-adds per image (torch's FLOP counter: 1.81 and 1.80 GFLOP against 1.38)
rm -rf /tmp/runs  # a machine may hold earlier sessions' runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=420 EVAL_SHIFTS=""
(export CUDA_VISIBLE_DEVICES=0; variant p2d4 5 --set model.patch_size=2 --set model.depth=4) &
(export CUDA_VISIBLE_DEVICES=1; variant img32 5 --set data.img_size=32) &
wait
finish c2
