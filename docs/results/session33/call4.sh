#!/bin/bash
# session 33 call 4 (1x H200): call 3's seed 1 with SAM chose epoch 73 by validation accuracy (96.20% on its split,
# 95.44% on test), while the validation loss of all six SAM runs was lowest at the last epoch. The same run choosing
# by validation loss (training.monitor=val_loss), alone on the GPU.
source docs/results/session33/lib.sh
variant sam32valloss 1 --set training.sam_epochs=32 --set training.monitor=val_loss
finish c4
