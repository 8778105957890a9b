#!/bin/bash
# session 33 call 3 (1x H200, the only kind lent then): SAM over the last 32 epochs at rho 0.05 (call 1's setting,
# 95.83% and 95.84% on seeds 5, 6; rho 0.15 in call 2: 95.72, 95.74) on seeds 1 and 2, side by side on the one GPU:
# compare the accuracies, not the times. No validation-split TTA checks, to stay inside the call's 10 minutes.
source docs/results/session33/lib.sh
export RUN_TIMEOUT=570 EVAL_SHIFTS=""
variant sam32 1 --set training.sam_epochs=32 &
variant sam32 2 --set training.sam_epochs=32 &
wait
finish c3
