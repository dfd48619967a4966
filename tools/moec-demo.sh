#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, import the bundled tiny
# Mixtral (exported from Hugging Face's MixtralForCausalLM), print its moe IR
# summary, check its forward against PyTorch's logits, and train it for a
# few steps on the bundled English text (Debian's fortunes, tokenised by
# python/moec/data.py). The CUDA backend is not built yet, so training runs
# on the CPU reference executor, GPU or not.
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
echo "== moec train $model --reference (CPU reference executor, 20 steps of 8x64 tokens)"
build/bin/moec train "$model" --reference --tokens test/Inputs/fortunes/train.pb \
  --valid test/Inputs/fortunes/valid.pb \
  --micro-batch-size 8 --steps 20 --lr 3e-3 --warmup-steps 5
