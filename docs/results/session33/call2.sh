#!/bin/bash
# session 33 call 2 (2x H200): SAM over the last 32 epochs as in call 1, at rho 0.15 instead of 0.05 (call 1: 95.83%,
# 95.84% for seeds 5, 6; the preset 95.57, 95.81). ViT-type models trained with AdamW and SAM were run at rho 0.05-0.2
# and above. One run per GPU, so both wall times read as alone.
source docs/results/session33/lib.sh
(export CUDA_VISIBLE_DEVICES=0; variant sam32rho015 5 --set training.sam_epochs=32 --set training.sam_rho=0.15) &
(export CUDA_VISIBLE_DEVICES=1; variant sam32rho015 6 --set training.sam_epochs=32 --set training.sam_rho=0.15) &
wait
finish c2
