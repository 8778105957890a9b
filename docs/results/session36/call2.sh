#!/bin/bash
# session 36 call 2 (one H200): the fashion_mnist preset (Muon since session 35) with Muon's lr at 2x and 4x the
# preset's: call 1 gave 95.92% and 95.84% on seed 5 (the preset: 95.46%); here 2x on seeds 1 and 2 (95.80%, 95.91%)
rm -rf /tmp/runs  # a machine may hold earlier sessions' runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=560 EVAL_SHIFTS=""
(export CUDA_VISIBLE_DEVICES=0; variant muonlr2 1 --set training.muon_lr_scale=2) &
(export CUDA_VISIBLE_DEVICES=0; variant muonlr2 2 --set training.muon_lr_scale=2) &
wait
finish c2
