#!/bin/bash
# session 35 call 4 (one H200, the last 300 s of device time, the machine still warm from call 3): Muon alone, seed 3
# (the preset: 95.52%), for the whole command's time alone; stopped at 290 s if it runs over
rm -rf /tmp/runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=290 EVAL_SHIFTS=""
(export CUDA_VISIBLE_DEVICES=0; variant muon 3 --set training.optimizer=muon)
finish c4
