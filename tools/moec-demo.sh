#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, import the bundled tiny
# Mixtral (exported from Hugging Face's MixtralForCausalLM), print its moe IR
# summary, check its forward against PyTorch's logits, and train it for a
# few steps on the bundled English text (Debian's fortunes, tokenised by
# python/moec/data.py): on the GPU when there is one (and nvcc), compiled by
# `moec compile`; else on the CPU reference executor. Same job either way.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup-debian.sh
tools/build.sh
model=test/Inputs/tiny/tiny-ort.onnx
data=test/Inputs/tiny/data_b2s8
echo "== moec import $model --summary"
build/bin/moec import "$model" --summary
echo "== moec run $model (CPU reference executor)"
build/bin/moec run "$model" --input "$data/input_0.pb" --expect "$data/output_0.pb"
tokens=test/Inputs/fortunes/train.pb
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1 &&
   { command -v nvcc > /dev/null || [ -x /usr/local/cuda/bin/nvcc ]; }; then
  out=build/demo
  mkdir -p "$out"
  echo '{"micro_batch_size": 8, "seq_length": 64}' > "$out/job.json"
  echo "== moec compile $model --config $out/job.json -o $out"
  build/bin/moec compile "$model" --config "$out/job.json" -o "$out"
  PYTHONPATH=python python3 -m moec.tokens "$tokens" "$out/train.bin"
  echo "== $out/train_step (GPU, 20 steps of 8x64 tokens)"
  "$out/train_step" --tokens "$out/train.bin" --steps 20 --lr 3e-3 --warmup-steps 5
else
  echo "== moec train $model --reference (no GPU: CPU reference executor, 20 steps of 8x64 tokens)"
  build/bin/moec train "$model" --reference --tokens "$tokens" \
    --valid test/Inputs/fortunes/valid.pb \
    --micro-batch-size 8 --steps 20 --lr 3e-3 --warmup-steps 5
fi
