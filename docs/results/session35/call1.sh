#!/bin/bash
# session 35 call 1 (one H200): session 34's untested CUDA-graph case with data.mix_prob on the GPU, beside two
# fashion_mnist runs sharing the GPU: half the batches mixed (data.mix_prob=0.5) and mixing off for the last 30
# epochs instead of 15 (data.mix_off_epochs=30), seed 5 (the preset: 95.57%)
rm -rf /tmp/runs  # a machine may hold earlier sessions' runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=560 EVAL_SHIFTS=""
python -m pytest tests/test_gpu.py -rs -k cuda_graphs_follows > /tmp/runs/pytest_gpu.txt 2>&1 &
(export CUDA_VISIBLE_DEVICES=0; variant mixprob05 5 --set data.mix_prob=0.5) &
(export CUDA_VISIBLE_DEVICES=0; variant mixoff30 5 --set data.mix_off_epochs=30) &
wait
tail -5 /tmp/runs/pytest_gpu.txt
finish c1
