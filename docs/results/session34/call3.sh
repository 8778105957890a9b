#!/bin/bash
# session 34 call 3 (2x H200), every run alone on its GPU:
# GPU 0: call 2's lead, 14x14 tokens in 4 blocks (seed 5: 95.71%, +0.14, but 364 s), on seed 6 (the preset: 95.81%);
# GPU 1: the preset choosing its best epoch by validation loss (training.monitor=val_loss), seeds 5 then 6: over the
# last 15 epochs, without mixing, validation loss fell in all 21 runs of sessions 31-32 while accuracy stayed flat
rm -rf /tmp/runs  # a machine may hold earlier sessions' runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=420 EVAL_SHIFTS=""
(export CUDA_VISIBLE_DEVICES=0; variant p2d4 6 --set model.patch_size=2 --set model.depth=4) &
(export CUDA_VISIBLE_DEVICES=1; variant valloss 5 --set training.monitor=val_loss; variant valloss 6 --set training.monitor=val_loss) &
wait
finish c3
