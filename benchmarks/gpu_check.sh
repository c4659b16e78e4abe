#!/usr/bin/env bash
# GPU checks of issue 22 in one device call (at most 9 minutes by the steps' time limits, so one
# `run` with timeout_s=600 holds it): the CUDA tests of the compressed module and of the statistics
# on devices, then the PyTorch benchmark of ViT-S at 112 px (spans 3→5, 8→10) on CUDA: eager at
# batch 1/8/64 in fp32, bf16 autocast, bf16 and fp16 weights, the eager original against its
# uncompressed capture, operator counts; then torch.compile at batch 1/64 (fp32, bf16 autocast).
# A step that fails or runs out of time leaves its log and the later steps still run. Results
# (JSON + logs + steps.txt) go to $OUT (default /tmp/gpu_check_out).
#
#   bash benchmarks/gpu_check.sh            # from the repository root; PYTHON= picks the interpreter
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

step() {  # step NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log, record its exit code
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "$name rc=$? ${limit}s-limit took=$((SECONDS - start))s" | tee -a "$OUT/steps.txt"
}

{ nvidia-smi; $PY -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"; } \
    >"$OUT/machine.txt" 2>&1
step cuda_tests 60 $PY -m pytest -q -p no:cacheprovider tests/test_inference_module.py -k cuda
step device_tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_stats_devices.py
step torch_eager 210 $PY benchmarks/bench_torch.py --device cuda --batch-sizes 1,8,64 --captured --profile \
    --iters 30 --warmup-s 2 --json "$OUT/torch_eager.json"
step torch_compile 180 $PY benchmarks/bench_torch.py --device cuda --batch-sizes 1,64 --precisions fp32,bf16-autocast \
    --compile --iters 30 --warmup-s 2 --json "$OUT/torch_compile.json"
cat "$OUT/steps.txt"
