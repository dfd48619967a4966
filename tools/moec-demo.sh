#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, import the bundled tiny
# Mixtral (exported from Hugging Face's MixtralForCausalLM), print its moe IR
# summary, and run its forward on the CPU reference executor against
# PyTorch's logits.
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
