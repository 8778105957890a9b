#!/bin/bash
# session 35 call 3 (one H200): the fashion_mnist preset with training.optimizer=muon (torch.optim.Muon on the
# blocks' Linear weights, AdamW on the rest, the preset's lr and decay) on seeds 1 and 2 (the preset: 95.80%, 95.72%); call 2 gave 95.46% (seed 5), 96.10% (seed 6),
# sharing the GPU as call 1's two runs did
rm -rf /tmp/runs  # a machine may hold earlier sessions' runs
source docs/results/session33/lib.sh
export RUN_TIMEOUT=560 EVAL_SHIFTS=""
python -c "import torch; print(torch.__version__, torch.optim.Muon)"
(export CUDA_VISIBLE_DEVICES=0; variant muon 1 --set training.optimizer=muon) &
(export CUDA_VISIBLE_DEVICES=0; variant muon 2 --set training.optimizer=muon) &
wait
finish c3
