#!/bin/bash
# session 34 call 1 (1x H200): the fashion_mnist preset at batch 512 (twice the steps: 106 a epoch, 13.5k in all)
# with lr 1e-3 (1.5e-3 over sqrt 2, as Adam's noise scale goes), seeds 5 and 6 side by side on the one GPU
# (the preset: 95.57%, 95.81%). Their times are shared; compare accuracies, and epoch speed against session 32's
# shared preset-shaped runs.
rm -rf /tmp/runs  # a machine may hold earlier sessions' runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=570 EVAL_SHIFTS=""
variant b512 5 --set data.batch_size=512 --set training.lr=1e-3 &
variant b512 6 --set data.batch_size=512 --set training.lr=1e-3 &
wait
finish c1
