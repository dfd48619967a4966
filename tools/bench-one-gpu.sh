#!/usr/bin/env bash
# The one-GPU benchmark of issue 16 (docs/benchmarks.md, "Running the
# benchmark"), in two halves like tools/gpu-tests.sh, so that one device
# call runs it:
#
#   tools/bench-one-gpu.sh prepare DIR        # where moec is: the
#                                             # mixtral-8x7b-2l programs of
#                                             # both recipes as CUDA sources,
#                                             # the runtime libraries, and
#                                             # torchtitan's model files
#   tools/bench-one-gpu.sh run DIR [RECIPE..] # where the GPU is (nvcc,
#                                             # torch, transformers)
#
# The run half builds the programs and ExpertsTest, runs the experts' guard
# (`ExpertsTest --bench` and `--bench hot 0.6`: the routing's balance must
# not change the experts' time), then `python -m moec.bench` for each recipe
# (bf16 and fp32-master unless named): Hugging Face eager and compiled,
# torchtitan eager and compiled, and moec, in interleaved rounds
# (BENCH_ROUNDS, default 2), each recipe's JSON and report in DIR/out.
# BENCH_SKIP names contenders to leave out (space-separated, moec.bench's
# --skip), for a call with less time. Both recipes with 2 rounds take about
# 10 minutes; one recipe fits a 10-minute device call.
#
# BENCH_VARIANTS (prepare) adds programs compiled with more job keys, each
# benchmarked beside the base program in the same rounds as moec-NAME: a
# space-separated list of NAME=KEY:VALUE[,KEY:VALUE...], e.g.
# BENCH_VARIANTS="full=activation_checkpointing:full bf16grads=grad_dtype:bf16"
# (true, false and numbers as they are, anything else as a JSON string).
# A variant's key replaces the recipe's own (fp32grads=grad_dtype:fp32).
# BENCH_RECIPES (prepare) compiles only the recipes it names (bf16,
# fp32-master; default both), e.g. for a variant one recipe refuses
# (store_param_remainders needs fp32 masters).
#
# prepare reads M2L_ONNX (a ready weights-free export of mixtral-8x7b-2l;
# else python -m moec.export makes one: needs torch) and TT_SITE (a folder
# of torchtitan 0.3.0 installed with --target; else pip installs it there,
# which needs a package registry; without either the run half says
# torchtitan is missing and benchmarks the rest).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mode="${1:-}"
dir="${2:-}"
if [[ -z "$mode" || -z "$dir" || ( "$mode" != prepare && "$mode" != run ) ]]; then
  echo "usage: $0 prepare DIR | run DIR [bf16] [fp32-master]" >&2
  exit 2
fi
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
# The recipes (docs/benchmarks.md, "mixtral-8x7b-2l on one H200"): name,
# moec.bench's --recipe, the job. fp32-master keeps the weight gradients
# bf16 (grad_dtype), as its PyTorch contenders do: autograd on the bf16
# copies, the gradients copied into the masters' fp32 .grad for the norm and
# AdamW (the variant fp32grads=grad_dtype:fp32 benchmarks moec's default),
# and the masters split into their copies and remainders
# (store_param_remainders: the same masters bit for bit, 2 bytes per
# parameter less in AdamW; nosplit=store_param_remainders:false without).
recipes=("bf16 bf16 \"param_dtype\": \"bf16\", "
         "fp32m fp32-master \"grad_dtype\": \"bf16\", \"store_param_remainders\": true, ")
job='"micro_batch_size": 4, "seq_length": 2048, "bf16": true, %s"router_aux_loss_coef": 0.02'

if [[ "$mode" == prepare ]]; then
  for r in ${BENCH_RECIPES:-}; do
    [[ "$r" == bf16 || "$r" == fp32-master ]] ||
      { echo "error: BENCH_RECIPES: '$r' is not a recipe (bf16, fp32-master)" >&2; exit 2; }
  done
  moec="${MOEC:-$root/build/bin/moec}"
  build="${MOEC_BUILD:-$root/build}"
  cudnn="$(sed -n 's/^MOEC_CUDNN_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt")"
  nccl="$(sed -n 's/^MOEC_NCCL_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt")"
  if [[ -z "$cudnn" || ! -f "$build/runtime/libmoert_cudnn.a" ]]; then
    echo "error: $build has no moert_cudnn library (build moec with CUDA and cuDNN)" >&2
    exit 1
  fi
  mkdir -p "$dir/lib"
  cp "$build/runtime/libmoert.a" "$build/runtime/libmoert_hf.a" "$build/runtime/libmoert_cudnn.a" "$dir/lib/"
  printf 'cudnn=%q\nnccl=%q\n' "$cudnn" "$nccl" > "$dir/lib/paths.sh"
  m2l="${M2L_ONNX:-}"
  if [[ -z "$m2l" ]]; then
    m2l="$dir/m2l.onnx"
    python3 -m moec.export --config mixtral-8x7b-2l --no-weights --dynamic -o "$m2l"
  fi
  # Each variant's keys as JSON members: NAME=k:v,k:v -> "k": v, "k": v,
  variant_keys() {
    local pair key value out=""
    IFS=, read -ra pairs <<< "${1#*=}"
    for pair in "${pairs[@]}"; do
      key="${pair%%:*}" value="${pair#*:}"
      if [[ -z "$key" || "$key" == "$pair" ]]; then
        echo "error: BENCH_VARIANTS: '$1' is not NAME=KEY:VALUE[,KEY:VALUE...]" >&2
        exit 2
      fi
      [[ "$value" =~ ^(true|false|-?[0-9]+(\.[0-9]+)?)$ ]] || value="\"$value\""
      out+="\"$key\": $value, "
    done
    printf '%s' "$out"
  }
  for v in ${BENCH_VARIANTS:-}; do
    [[ "${v%%=*}" =~ ^[a-z0-9-]+$ ]] ||
      { echo "error: BENCH_VARIANTS: the name of '$v' is not [a-z0-9-]+" >&2; exit 2; }
    variant_keys "$v" > /dev/null
  done
  rm -rf "$dir"/m2l-* "$dir"/*.json "$dir"/*.log
  for recipe in "${recipes[@]}"; do
    read -r name bench_recipe extra <<< "$recipe"
    [[ " ${BENCH_RECIPES:-bf16 fp32-master} " == *" $bench_recipe "* ]] || continue
    variants=("$name=")
    for v in ${BENCH_VARIANTS:-}; do
      variants+=("$name-$v")
    done
    for v in "${variants[@]}"; do
      program="${v%%=*}" keys="" base="${extra:+$extra }"
      if [[ "$program" != "$name" ]]; then
        keys="$(variant_keys "$v")"
        IFS=, read -ra pairs <<< "${v#*=}"
        for pair in "${pairs[@]}"; do  # the variant's value, not both
          base="$(printf '%s' "$base" | sed "s/\"${pair%%:*}\": [^,]*, *//")"
        done
      fi
      # shellcheck disable=SC2059 # the job is the format
      printf "{$job}\n" "$base$keys" > "$dir/$program.json"
      if ! "$moec" compile "$m2l" --config "$dir/$program.json" --emit cuda -o "$dir/m2l-$program" \
          > "$dir/$program.log" 2>&1; then
        tail -5 "$dir/$program.log" >&2
        echo "error: moec compile failed for $dir/m2l-$program (job $(cat "$dir/$program.json"))" >&2
        exit 1
      fi
      grep '^memory plan' "$dir/$program.log" || true
    done
  done
  if [[ -n "${TT_SITE:-}" ]]; then
    rm -rf "$dir/tt-site" && cp -r "$TT_SITE" "$dir/tt-site"
  elif ! python3 -m pip install --quiet --no-deps --target "$dir/tt-site" \
      torchtitan==0.3.0 spmd_types==0.2.3 tyro docstring-parser typeguard; then
    rm -rf "$dir/tt-site"
    echo "warning: torchtitan could not be installed into $dir/tt-site (no registry?); the run half will benchmark without it" >&2
  fi
  echo "prepared $dir ($(du -sh "$dir" | cut -f1))"
  exit 0
fi

# ---------------------------------------------------------------- run half
# shellcheck disable=SC1091
source "$dir/lib/paths.sh"
out="$dir/out"
mkdir -p "$out" "$dir/bin"
shift 2
wanted=("$@")
(( ${#wanted[@]} )) || wanted=(bf16 fp32-master)
started=$SECONDS
elapsed() { echo "[$((SECONDS - started)) s]"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$out/gpu.txt"

echo "== building the programs and ExpertsTest $(elapsed)"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
{
  find "$dir" -mindepth 2 -maxdepth 2 -path "$dir/m2l-*" -name build.sh -printf 'sh %p\n'
  echo "\"$nvcc\" -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a -I\"$root/runtime/include\" \
    \"$root/runtime/tests/ExpertsTest.cu\" -o \"$dir/bin/ExpertsTest\" \"$dir/lib/libmoert.a\" \
    \"$dir/lib/libmoert_hf.a\" -lcublas -lcublasLt"
} | MOERT_INCLUDE_DIR="$root/runtime/include" MOERT_LIBRARY_DIR="$dir/lib" \
    xargs -P "$(nproc)" -I{} sh -c '{}' > "$out/build.log" 2>&1 ||
  { tail -50 "$out/build.log"; echo "FAIL: the build"; exit 1; }
echo "built $(elapsed)"

echo "== the experts' guard: balanced and skewed routing take the same time $(elapsed)"
# (The libraries take turns; a failed bench is said here and the run goes on.)
for hot in "" "hot 0.6"; do
  file="$out/experts-bench${hot:+-hot}.txt"
  # shellcheck disable=SC2086 # "hot F" is two words
  if ! "$dir/bin/ExpertsTest" --bench $hot > "$file.all" 2>&1; then
    echo "warning: ExpertsTest --bench $hot failed: $(grep -m1 FAIL "$file.all" || tail -1 "$file.all")"
  fi
  grep 'experts ' "$file.all" | tee "$file"
done

tt=()
[[ -d "$dir/tt-site" ]] && tt=(--torchtitan-path "$dir/tt-site")
skips=()
for s in ${BENCH_SKIP:-}; do skips+=(--skip "$s"); done
status=0
for want in "${wanted[@]}"; do
  program=""
  for recipe in "${recipes[@]}"; do
    read -r name flag _ <<< "$recipe"
    [[ "$flag" == "$want" ]] && program="$dir/m2l-$name/train_step"
  done
  if [[ -z "$program" ]]; then
    echo "error: no recipe '$want' (bf16, fp32-master)" >&2
    exit 2
  fi
  # The base program, then the variants prepare compiled (BENCH_VARIANTS).
  programs=(--moec "moec=$program")
  for variant in "${program%/train_step}"-*/train_step; do
    [[ -x "$variant" ]] || continue
    suffix="${variant%/train_step}"
    programs+=(--moec "moec-${suffix#"${program%/train_step}"-}=$variant")
  done
  echo "== python -m moec.bench --recipe $want $(elapsed)"
  python3 -m moec.bench "${programs[@]}" --recipe "$want" "${tt[@]}" "${skips[@]}" \
    --rounds "${BENCH_ROUNDS:-2}" --json "$out/bench-$want.json" 2>&1 | tee "$out/bench-$want.txt" ||
    status=1
done
echo "done $(elapsed); results in $out"
exit $status
