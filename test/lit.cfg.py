# -*- Python -*-
"""lit configuration for moec's tests.

Test files: .mlir (passes and diagnostics, through moec-opt), .test (driver
and end-to-end runs). Python with numpy/onnxruntime is used by some tests
and marked by the `onnxruntime` feature, those of the benchmark's torchtitan
model by `torchtitan`, those that run Hugging Face's Mixtral by
`transformers`; tests that build CUDA programs need
`nvcc`, those of bf16 attention on cuDNN `cudnn` (moec built with the cuDNN
frontend); GPU tests need the `gpu` feature, which is set only when an NVIDIA
GPU answers `nvidia-smi`, and are reported UNSUPPORTED elsewhere.
"""

import os
import shutil
import subprocess

import lit.formats
from lit.llvm import llvm_config

config.name = "moec"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.excludes = ["Inputs", "lit.cfg.py", "lit.site.cfg.py", "CMakeLists.txt"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.moec_obj_root, "test")

config.substitutions.append(("%moec_src", config.moec_src_root))
config.substitutions.append(("%inputs", os.path.join(config.moec_src_root, "test", "Inputs")))
config.substitutions.append(("%python", config.python_executable))
config.substitutions.append(("%moec_bin", os.path.join(config.moec_tools_dir, "moec")))
config.environment["PYTHONPATH"] = os.path.join(config.moec_src_root, "python")

llvm_config.with_system_environment(["HOME", "TMPDIR"])
llvm_config.use_default_substitutions()
llvm_config.add_tool_substitutions(
    ["moec", "moec-opt", "moec-translate", "moec-unittests", "moert-info",
     "moert-alltoall-bench",
     "moec-fuzz-onnx-import", "moec-fuzz-training-job", "moec-fuzz-token-file",
     "moec-fuzz-checkpoint", "moec-fuzz-safetensors"], [config.moec_tools_dir])
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)


def python_has(module):
    return subprocess.run([config.python_executable, "-c", "import " + module],
                          capture_output=True).returncode == 0


if python_has("onnxruntime") and python_has("numpy"):
    config.available_features.add("onnxruntime")

# onnx_ir (onnxscript's IR): python -m moec.inspect_onnx.
if python_has("onnx_ir"):
    config.available_features.add("onnx_ir")

# Hugging Face's tokenizers: python -m moec.jsonl's "text" documents.
if python_has("tokenizers"):
    config.available_features.add("tokenizers")

# torch and transformers: checks against Hugging Face's Mixtral.
if python_has("torch") and python_has("transformers"):
    config.available_features.add("transformers")

# torchtitan beside torch and transformers: the benchmark's torchtitan contender.
if python_has("torchtitan") and python_has("torch") and python_has("transformers"):
    config.available_features.add("torchtitan")

# The runtime's CUDA-side host code (checkpoints, the driver) was built.
if config.moec_have_cuda:
    config.available_features.add("moert-cuda")

if shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc"):
    config.available_features.add("nvcc")

# moec was built with the cuDNN frontend: bf16 attention compiles to cuDNN.
if config.moec_have_cudnn:
    config.available_features.add("cudnn")

if shutil.which("nvidia-smi") and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0:
    config.available_features.add("gpu")
    # Two GPUs or more: the two-GPU check (tools/multi-gpu.sh).
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    if sum(line.startswith("GPU ") for line in listed.splitlines()) >= 2:
        config.available_features.add("gpus-2")
