#!/bin/bash
# session 34 call 4 (2x H200): the preset choosing by validation loss on two more seeds, 1 and 2 (the preset: 95.80%,
# 95.72% in sessions 29-30), each alone on its GPU; call 3's seeds 5 and 6 both chose the last epoch (+0.19, +0.02)
rm -rf /tmp/runs  # a machine may hold earlier sessions' runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=300 EVAL_SHIFTS=""
(export CUDA_VISIBLE_DEVICES=0; variant valloss 1 --set training.monitor=val_loss) &
(export CUDA_VISIBLE_DEVICES=1; variant valloss 2 --set training.monitor=val_loss) &
wait
finish c4
