#!/bin/bash
# call 4 (one H200, the session's last 5 minutes of device time): hybrid-small's step with this tree (issue #5's
# MFU figure), then the presets' step with VISION_MAMBA_CONV=shifts
mkdir -p $OUT/c4
bench() {  # conv size blocks
  VISION_MAMBA_CONV=$1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$1_$2_$3 TRITON_CACHE_DIR=/tmp/tri_$1_$2_$3 \
   python benchmarks/bench_train.py --device cuda --sizes $2 --block_types $3 --batch_sizes 1024 --steps 40 \
   --warmup 10 --json $OUT/c4/bench.jsonl 2>&1 | tail -1 | sed "s/^/$1 /" >> $OUT/c4/bench.txt
}
bench aten small hybrid; bench shifts tiny ssm,attention
cat $OUT/c4/bench.txt
