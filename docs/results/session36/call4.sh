#!/bin/bash
# session 36 call 4 (one H200, the last ~300 s of the session's device time on call 3's machine, still warm):
# the preset with Muon at 2x lr alone on the GPU, seed 4, for its wall time (calls 1-3: 5 seeds, 96.04% mean)
rm -rf /tmp/runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=280 EVAL_SHIFTS=""
(export CUDA_VISIBLE_DEVICES=0; variant muonlr2alone 4 --set training.muon_lr_scale=2)
finish c4
