#!/bin/bash
# call B (2x H200): GPU 0 fashion_mnist seeds 1, 2; GPU 1 micro2, three benches, fashion_mnist seed 3
R=$(pwd); mkdir -p $OUT/b /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
timed() {  # name, then the command
  local name=$1; shift; local start=$(date +%s%N)
  "$@" > $OUT/b/$name.txt 2>&1; local rc=$?
  echo "$name rc $rc wall $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a $OUT/b/$name.txt >> $OUT/b/walls.txt
}
fashion() { TORCHINDUCTOR_CACHE_DIR=/tmp/ind_f$1 TRITON_CACHE_DIR=/tmp/tri_f$1 timed fashion_seed$1 python train_vision_mamba.py --config fashion_mnist --data_dir /tmp/fm --seed $1 --quiet --output_dir /tmp/runs/f$1; }
(export CUDA_VISIBLE_DEVICES=0; fashion 1; fashion 2) &
(export CUDA_VISIBLE_DEVICES=1
 cd .devdata/exp && TRITON_CACHE_DIR=/tmp/tcm python micro2.py > $OUT/b/micro2.txt 2>&1; cd $R
 for spec in "tiny hybrid" "tiny ssm,attention" "small hybrid"; do set -- $spec
   TORCHINDUCTOR_CACHE_DIR=/tmp/ind_b$1$2 TRITON_CACHE_DIR=/tmp/tri_b$1$2 python benchmarks/bench_train.py --device cuda --sizes $1 --block_types $2 --batch_sizes 1024 --steps 40 --warmup 10 --json $OUT/b/bench.jsonl >> $OUT/b/bench.txt 2>&1
 done
 fashion 3) &
wait
cd /tmp/runs && tar cf $OUT/b/runs.tar --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/b/walls.txt; cat $OUT/b/micro2.txt; grep "img/s" $OUT/b/bench.txt; for f in $OUT/b/fashion*.txt; do echo $f; grep -i "test acc\|nan\|diverg" $f | tail -3; done
