#!/usr/bin/env bash
# Installs what moec needs to build and test on Debian 12 (bookworm) or a
# derivative: MLIR/LLVM 22, ONNX, protobuf, fmt, GoogleTest, Ninja from the
# distribution (nlohmann-json3-dev: the runtime's JSON parser, for safetensors
# headers and Hugging Face indexes), numpy/onnx/onnxruntime/onnx-ir from PyPI for the Python side of the
# tests, and the header-only cuDNN frontend from PyPI (its headers only: the
# package's Python dependencies are not needed to compile against it) for
# bf16 attention on cuDNN. Safe to run again; it only installs what is
# missing. With --fuzz it also installs clang 22 and libFuzzer (with the
# sanitizers' runtimes) for tools/fuzz.sh, which the normal build does not
# need.
set -euo pipefail

packages=(cmake ninja-build g++ libmlir-22-dev mlir-22-tools llvm-22-dev
          llvm-22-tools libonnx-dev libprotobuf-dev protobuf-compiler
          libfmt-dev libgtest-dev zlib1g-dev libcli11-dev nlohmann-json3-dev)
if [ "${1:-}" = --fuzz ]; then
  packages+=(clang-22 libclang-rt-22-dev libfuzzer-22-dev)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -c "import numpy, onnx, onnxruntime, tokenizers, onnx_ir" 2>/dev/null ||
  python3 -m pip install -q numpy onnx onnxruntime tokenizers onnx-ir

# The cuDNN frontend's C++ headers (site-packages/include/cudnn_frontend.h).
python3 -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['purelib'], 'include', 'cudnn_frontend.h')))" ||
  python3 -m pip install -q --no-deps nvidia-cudnn-frontend==1.32.0
