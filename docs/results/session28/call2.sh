#!/bin/bash
# session 28 call 2 (one H200): fashion_mnist preset, seed 1, with the wide (w2) stems of call 1, more conv at H/2 (conv9), fewer blocks, more epochs; the three runs share the GPU,
# so compare accuracies, not times. w2 = a tree whose halving stems have twice the channels (D/2 at full size, D at H/2).
R=$(pwd); mkdir -p $OUT/c2 /tmp/runs
mkdir -p /tmp/fm/FashionMNIST/raw && cp .devdata/fmgz/*.gz /tmp/fm/FashionMNIST/raw/ && gunzip -f /tmp/fm/FashionMNIST/raw/*.gz
variant() {  # name file sed-expression [base dir]
  mkdir -p /tmp/$1 && (cd ${4:-$R} && git -C $R ls-files -z | xargs -0 tar -c) | tar -x -C /tmp/$1 && sed -i "$3" /tmp/$1/$2 && diff $R/$2 /tmp/$1/$2 | grep "^>"
}
variant w2 vision_mamba.py 's|quarter, half = embed_dim // 4, embed_dim // 2|quarter, half = embed_dim // 2, embed_dim|'
run() {  # name dir, then --set flags
  local name=$1 dir=$2; shift 2; local start=$(date +%s%N)
  (cd $dir && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$name TRITON_CACHE_DIR=/tmp/tri_$name timeout 555 python train_vision_mamba.py \
   --config fashion_mnist --data_dir /tmp/fm --seed 1 --quiet --output_dir /tmp/runs/$name "$@" > $OUT/c2/$name.txt 2>&1)
  echo "$name rc $? wall $(( ($(date +%s%N) - start) / 1000000000 )) s" >> $OUT/c2/walls.txt
}
run conv9w2_depth6 /tmp/w2 --set model.stem=conv9 --set model.depth=6 &
run conv7w2_depth4 /tmp/w2 --set model.stem=conv7 --set model.depth=4 &
run conv7w2_depth6_80ep /tmp/w2 --set model.stem=conv7 --set model.depth=6 --epochs 80 & wait
cd /tmp/runs && tar czf $OUT/c2/runs.tgz --exclude='*.pth' --exclude='tensorboard' .
cat $OUT/c2/walls.txt; for f in $OUT/c2/*.txt; do echo "== $f"; grep -i "params\|^test:\|nan" $f | tail -3; done
