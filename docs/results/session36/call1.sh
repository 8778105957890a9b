#!/bin/bash
# session 36 call 1 (one H200): the fashion_mnist preset (Muon since session 35) with Muon's lr at 2x and 4x the
# preset's (training.muon_lr_scale), both on seed 5 (the preset: 95.46%), sharing the GPU
rm -rf /tmp/runs  # a machine may hold earlier sessions' runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=560 EVAL_SHIFTS=""
(export CUDA_VISIBLE_DEVICES=0; variant muonlr2 5 --set training.muon_lr_scale=2) &
(export CUDA_VISIBLE_DEVICES=0; variant muonlr4 5 --set training.muon_lr_scale=4) &
wait
finish c1
