#!/bin/bash
# session 36 call 3 (one H200): the fashion_mnist preset (Muon since session 35) with Muon's lr at 2x and 4x the
# preset's: call 1 gave 95.92% and 95.84% on seed 5 (the preset: 95.46%); call 2 95.96%, 96.11% on seeds 1, 2 (95.80%, 95.91%); here 2x on seeds 3 and 6 (95.85%, 96.10%)
rm -rf /tmp/runs  # a machine may hold earlier sessions' runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=560 EVAL_SHIFTS=""
(export CUDA_VISIBLE_DEVICES=0; variant muonlr2 3 --set training.muon_lr_scale=2) &
(export CUDA_VISIBLE_DEVICES=0; variant muonlr2 6 --set training.muon_lr_scale=2) &
wait
finish c3
