#!/usr/bin/env bash
# Regenerates the README's "Results on real weights" tables: three select-eval reports
# (markdown + JSON + plots) under OUT (default ./results). Heavy: the first two are sized for a
# GPU (about 5 and 2.5 minutes on one H100); the third for two CPU cores (about 30 minutes).
# Fashion-MNIST needs `apt-get install dataset-fashion-mnist` (or pass its directory as --data).
set -euo pipefail
OUT=${1:-results}
mkdir -p "$OUT"
{ date -u; python -c "import torch, platform; print(platform.node(), torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"; } > "$OUT/when.txt"
fxapprox select-eval dinov2-small --data fashion-mnist --samples 500 --train 10000 --test 0 --size 112 \
  --batch-size 256 --epochs 30 --sample-sizes 10,50,100,500,1000 --ablation-spans 0-1,2-3,4-5,6-7,8-9,10-11 \
  --out "$OUT/dinov2-fashion"
fxapprox select-eval minilm-l6 --data rotten-tomatoes --samples 500 --train 0 --test 0 --batch-size 256 \
  --epochs 30 --sample-sizes 10,50,100,500,1000 --out "$OUT/minilm-rotten"
fxapprox select-eval dinov2-small --data mnist-5k --samples 256 --train 0 --test 0 --size 56 --batch-size 64 \
  --epochs 30 --out "$OUT/dinov2-mnist5k"
