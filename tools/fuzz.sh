#!/usr/bin/env bash
# Builds the libFuzzer targets (MOEC_FUZZ=ON, clang-22, AddressSanitizer and
# UndefinedBehaviorSanitizer) into ./build-fuzz and runs one of them.
#
#   tools/fuzz.sh TARGET SECONDS [LIBFUZZER FLAGS...]
#   tools/fuzz.sh all SECONDS      each target for SECONDS
#
# TARGET is onnx-import, training-job, token-file, checkpoint or
# safetensors. The seed corpus is made at run time from the test inputs (the
# bundled ONNX models without their weights, the job configs, a token file,
# checkpoint manifests, small safetensors files and the tiny checkpoint's
# index) into
# build-fuzz/corpus/TARGET/seeds; what libFuzzer adds goes to
# build-fuzz/corpus/TARGET/found and is kept between runs. The regression
# inputs kept under test/fuzz/TARGET run first. A crash, hang or sanitizer
# report stops the run (exit status non-zero) with the input saved as
# build-fuzz/crashes/TARGET-*; keep it under test/fuzz/TARGET once fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(onnx-import training-job token-file checkpoint safetensors)
if (($# < 2)); then
  echo "usage: $0 {${targets[*]// /|}|all} SECONDS [libFuzzer flags]" >&2
  exit 2
fi
target=$1 seconds=$2
shift 2
if [ "$target" = all ]; then
  for t in "${targets[@]}"; do "$0" "$t" "$seconds" "$@"; done
  exit 0
fi
[[ " ${targets[*]} " == *" $target "* ]] ||
  { echo "unknown fuzz target '$target' (${targets[*]})" >&2; exit 2; }

{ command -v clang++-22 && python3 -c "import onnx"; } >/dev/null 2>&1 ||
  tools/setup-debian.sh --fuzz
build=build-fuzz
if [ ! -f $build/build.ninja ]; then
  cmake -S . -B $build -G Ninja -DMOEC_FUZZ=ON \
    -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22 \
    -DMLIR_DIR=/usr/lib/llvm-22/lib/cmake/mlir \
    -DLLVM_EXTERNAL_LIT=/usr/lib/llvm-22/bin/lit >/dev/null
fi
ninja -C $build -j"${MOEC_JOBS:-$(nproc)}" "moec-fuzz-$target"

corpus=$build/corpus/$target
seeds=$corpus/seeds
rm -rf "$seeds"
mkdir -p "$seeds" "$corpus/found" $build/crashes
case $target in
onnx-import)
  # Every bundled model, weights-free and without the exporter's metadata
  # (tools/fuzz/onnx-seeds.py says why), but the full-size Mixtral 8x7B
  # graphs: 32 layers at width 4096 take 10 to 20 s an execution to raise,
  # and the same exporter forms are bundled at tiny sizes (test/Inputs/user).
  find test/Inputs -name '*.onnx' -not -path '*/mixtral-8x7b/*' -print0 |
    xargs -0 python3 tools/fuzz/onnx-seeds.py "$seeds"
  ;;
training-job)
  cp test/Inputs/train-bf16/*.json "$seeds"
  printf '{"micro_batch_size": 2, "seq_length": 64, "bf16": true, "param_dtype": "bf16"}' >"$seeds/bf16.json"
  printf '{"world_size": 8, "expert_parallel_degree": 4, "sharding_strategy": "hybrid_shard", "hybrid_shard_degree": 2}' >"$seeds/mesh.json"
  printf 'micro-batch-size 4\nseq-length 128\nmoe-load-balancing sinkhorn\nactivation-checkpointing auto\nmemory-budget-gib 40' >"$seeds/flags.txt"
  ;;
token-file)
  # seq 4 (byte 3), vocabulary 258 (byte 1), two blocks.
  python3 -c "import struct,sys; sys.stdout.buffer.write(bytes([3,1]) + struct.pack('<8q', 0,1,2,3,257,5,6,7))" >"$seeds/two-blocks.bin"
  ;;
checkpoint)
  printf 'moec-checkpoint\t1\nstep\t3\nseed\t1234\nskipped_steps\t1\nmesh\t1\t2\t1\nshard_bytes\t96\nparameter\tembed.weight\t4\t0\t32\t64\t2x4\t4x4\t0\t0\nshard\trank_0.shard\t96\t00000000deadbeef\nshard\trank_1.shard\t96\t0123456789abcdef\nend\n' >"$seeds/manifest.tsv"
  # The resharding tests' model (test/runtime/CheckpointTest.cpp: a
  # padded embedding, 4 experts, a bf16 norm) on (H, P) = (2, 2). The
  # target writes the shards and picks the new mesh from the seed: 121 is
  # (H, P) = (4, 4), 0 the same layout, 4473 (4, 4) with rank 1's shard
  # corrupted.
  for seed in 121 0 4473; do
    {
      printf 'moec-checkpoint\t1\nstep\t2\nseed\t%s\nmesh\t1\t2\t2\nshard_bytes\t594\n' $seed
      printf 'parameter\tembed\t4\t0\t120\t240\t5x6\t10x6\t0\t0\n'
      printf 'parameter\texperts.w1\t4\t360\t432\t504\t2x3x3\t4x6x3\t1\t1\n'
      printf 'parameter\tnorm\t2\t576\t582\t588\t3\t5\t0\t0\n'
      for r in 0 1 2 3; do printf 'shard\trank_%s.shard\t594\t0000000000000000\n' $r; done
      printf 'end\n'
    } >"$seeds/reshard-$seed.tsv"
  done
  ;;
safetensors)
  # Small files of the layout Hugging Face writes (8-byte length, JSON
  # header padded with spaces, data), and the tiny checkpoint's index.
  python3 - "$seeds" <<'PY'
import json, struct, sys
def write(name, tensors, meta=None):
    header, data = {}, b""
    if meta:
        header["__metadata__"] = meta
    for tensor, (dtype, shape, raw) in tensors.items():
        header[tensor] = {"dtype": dtype, "shape": shape,
                          "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(f"{sys.argv[1]}/{name}", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
write("dtypes.safetensors", {
    "model.embed_tokens.weight": ("F32", [2, 3], struct.pack("<6f", *range(6))),
    "model.norm.weight": ("BF16", [3], struct.pack("<3H", 0x3f80, 0xc000, 0x7f80)),
    "lm_head.weight": ("F16", [1, 2], struct.pack("<2H", 0x3c00, 0x7c00)),
    "ids": ("I64", [2], struct.pack("<2q", -1, 7)),
    "empty": ("F32", [0, 4], b"")}, {"format": "pt"})
write("scalar.safetensors", {"s": ("U8", [], b"\x05")})
PY
  cp test/Inputs/hf/tiny/model.safetensors.index.json "$seeds/index.json"
  ;;
esac

# Containers shared with the uninstrumented MLIR library cannot be checked
# for overflow (their annotations would disagree), nor can LLVM's
# BumpPtrAllocator slabs be poisoned by hand: the instrumented copies of its
# header code poison what MLIR's uninstrumented copies then hand out (a
# "use-after-poison" inside mlir::StringAttr::get after 151,045 executions
# sharing one context, which no input reproduces alone).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_container_overflow=0:allow_user_poisoning=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The kept regression inputs (test/fuzz/TARGET) run first, as seeds.
regressions=()
[ -d "test/fuzz/$target" ] && regressions=("test/fuzz/$target")
exec $build/bin/moec-fuzz-$target "$corpus/found" "$seeds" "${regressions[@]}" \
  -max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 \
  -artifact_prefix=$build/crashes/$target- -print_final_stats=1 "$@"
