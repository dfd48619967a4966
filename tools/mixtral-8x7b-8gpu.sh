#!/usr/bin/env bash
# Mixtral 8x7B (32 layers, 46.7 B parameters) trained on one node of 8 H200s
# (issue 19), in two halves, because the compiler and the GPUs need not be on
# one machine:
#
#   tools/mixtral-8x7b-8gpu.sh prepare DIR   # where moec is (and python3 with
#                                            # sentencepiece, numpy, onnx, and
#                                            # Debian's fortunes text)
#   tools/mixtral-8x7b-8gpu.sh run DIR       # where the GPUs are (nvcc, NCCL,
#                                            # torch for torchrun and FSDP2)
#
# prepare: `moec plan --recommend` of the weights-free export
# (test/Inputs/mixtral-8x7b/model.onnx) for 8 x h200-141gb at sequence 4096,
# micro-batch 1, bf16 compute on fp32 masters, dropless all-to-all dispatch
# (DIR/recommend.json and .txt); the first layout that fits (or LAYOUT="P H
# CHECKPOINTING"); `moec plan` of that layout (DIR/plan.txt); `moec compile
# --emit cuda` of it (DIR/program: the rank program's source, build.sh and
# manifest with the memory plan), timed (DIR/compile-seconds); the bundled
# corpus (Debian's fortunes, `python -m moec.data`) tokenised with a
# 32000-entry sentencepiece BPE vocabulary into blocks of 4096 tokens
# (DIR/data, DIR/data/train.bin); moec's runtime libraries (DIR/lib).
# LAYERS=N (1..32, default 32) compiles the first N decoder layers of the
# same model instead (`moec import`, then `python -m moec.mixtral_8gpu
# first-layers`): every rank's shapes and the layout unchanged, for a run of
# all 8 ranks on one GPU.
#
# run: builds the program (nvcc), then with 8 GPUs launches 8 ranks
# (torchrun --no-python), with one GPU runs the 8 ranks as threads on it
# (--simulate-ranks 8; only a program whose 8 ranks fit one GPU: LAYERS=1);
# STEPS steps (default 50) on the corpus, the step STEPS-5 (or the last)
# profiled, while
# nvidia-smi samples every GPU's memory; then `python -m moec.mixtral_8gpu
# report` checks that the loss falls and that every GPU's measured peak is
# within 10% of the plan, and prints tokens/s, model TFLOP/s per GPU and
# where the profiled step's time went (DIR/out/report.json). With 8 GPUs it
# then runs PyTorch FSDP2 of the Hugging Face model on the same node
# (python -m moec.fsdp2_bench; FSDP2_COMPILE="per-layer model" for both
# torch.compile modes), or says why it does not.
# Exits non-zero when a check fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mode="${1:-}"
dir="${2:-}"
if [[ -z "$mode" || -z "$dir" ]]; then
  echo "usage: $0 prepare|run DIR" >&2
  exit 2
fi
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
world=8
seq=4096
gpu=h200-141gb

if [[ "$mode" == prepare ]]; then
  moec="${MOEC:-$root/build/bin/moec}"
  build="${MOEC_BUILD:-$root/build}"
  layers="${LAYERS:-32}"
  model="$root/test/Inputs/mixtral-8x7b/model.onnx"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  # The layout: moec plan's recommendation, or LAYOUT="P H CHECKPOINTING".
  "$moec" plan "$model" --world-size "$world" --gpu "$gpu" \
    --seq-length "$seq" --recommend > "$dir/recommend.txt"
  "$moec" plan "$model" --world-size "$world" --gpu "$gpu" \
    --seq-length "$seq" --recommend --json > "$dir/recommend.json"
  read -r p h ckpt <<< "${LAYOUT:-$(python3 -m moec.mixtral_8gpu layout "$dir/recommend.json")}"
  layout=(--world-size "$world" --expert-parallel-degree "$p"
          --hybrid-shard-degree "$h" --activation-checkpointing "$ckpt"
          --micro-batch-size 1 --seq-length "$seq" --bf16)
  echo "layout: P $p, H $h, activation checkpointing $ckpt (${LAYOUT:+LAYOUT}${LAYOUT:-moec plan --recommend})"
  "$moec" plan "$model" "${layout[@]}" --gpu "$gpu" > "$dir/plan.txt"
  grep -E "^  total|^step estimate|program's memory|^  state .* = " "$dir/plan.txt" || true
  if [[ "$layers" != 32 ]]; then
    "$moec" import "$model" -o "$dir/forward-32.mlir"
    python3 -m moec.mixtral_8gpu first-layers "$dir/forward-32.mlir" "$layers" "$dir/forward.mlir"
    model="$dir/forward.mlir"
  fi
  rm -rf "$dir/program"
  start=$(date +%s.%N)
  "$moec" compile "$model" "${layout[@]}" --emit cuda -o "$dir/program" | tee "$dir/compile.txt"
  end=$(date +%s.%N)
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$start" "$end" \
    > "$dir/compile-seconds"
  echo "moec compile (${layers} layers, --emit cuda): $(cat "$dir/compile-seconds") s"
  printf '%s\n' "$layers" > "$dir/layers"
  # The corpus, tokenised with a 32000-entry vocabulary, in 4096-token blocks.
  if [[ ! -f "$dir/data/train.bin" ]]; then
    python3 -m moec.data --out "$dir/data" --vocab-size 32000 --seq-len "$seq" \
      ${FORTUNES_DIR:+--text-dir "$FORTUNES_DIR"}
    python3 -m moec.tokens "$dir/data/train.pb" "$dir/data/train.bin"
  fi
  # The runtime libraries the program links.
  mkdir -p "$dir/lib"
  cp "$build/runtime/libmoert.a" "$build/runtime/libmoert_hf.a" \
    "$build/runtime/libmoert_cudnn.a" "$dir/lib/"
  echo "prepared $dir"
  exit 0
fi

[[ "$mode" == run ]] || { echo "unknown mode '$mode'" >&2; exit 2; }
dir="$(cd "$dir" && pwd)"
out="$dir/out"
rm -rf "$out" && mkdir -p "$out"
steps="${STEPS:-50}"
profile_step=$(( steps > 5 ? steps - 5 : steps ))
bench_warmup=$(( steps > 10 ? 5 : 1 ))
layers="$(cat "$dir/layers")"

start=$(date +%s)
MOERT_INCLUDE_DIR="${MOERT_INCLUDE_DIR:-$root/runtime/include}" \
  MOERT_LIBRARY_DIR="$dir/lib" sh "$dir/program/build.sh"
echo "nvcc of the rank program ($layers layers): $(($(date +%s) - start)) s"

gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
program=("$dir/program/train_step" --tokens "$dir/data/train.bin"
         --steps "$steps" --lr 3e-4 --min-lr 3e-5 --warmup-steps 10
         --bench-warmup "$bench_warmup" --profile-step "$profile_step" --log "$out/metrics.csv")
if (( gpus >= world )); then
  ranks_per_gpu=1
  # torchrun, or the module it runs where its script is not on the PATH.
  if command -v torchrun > /dev/null; then
    launch=(torchrun)
  else
    launch=(python3 -m torch.distributed.run)
  fi
  launch+=(--nproc-per-node "$world" --no-python)
  export MOERT_JOB_TOKEN="${MOERT_JOB_TOKEN:-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')}"
elif (( layers <= 1 )); then
  # All 8 ranks as threads of one process on the one GPU.
  ranks_per_gpu=$world
  launch=()
  program+=(--simulate-ranks "$world")
else
  echo "error: $gpus GPU(s): the $layers-layer program needs $world GPUs" \
    "(prepare with LAYERS=1 to run its $world ranks on one GPU)" >&2
  exit 1
fi
echo "running $world ranks on $gpus GPU(s) ($ranks_per_gpu per GPU), $steps steps of $seq tokens per rank"
nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits \
  -lms 200 > "$out/memory.csv" &
sampler=$!
status=0
"${launch[@]}" "${program[@]}" > "$out/train.txt" 2>&1 || status=$?
kill "$sampler" 2> /dev/null || true
wait "$sampler" 2> /dev/null || true
grep -E "^(\[rank 0\] )?(step +(1|10|20|30|40|$steps) |memory|mesh|summary)" "$out/train.txt" || true
if (( status != 0 )); then
  tail -n 30 "$out/train.txt"
  echo "error: the training program exited with status $status" >&2
  exit 1
fi
check=0
python3 -m moec.mixtral_8gpu report "$dir" --ranks-per-gpu "$ranks_per_gpu" \
  --steps "$steps" --profile-step "$profile_step" || check=$?

# PyTorch FSDP2 of the Hugging Face model on the same node, where it fits.
if (( gpus < world )); then
  echo "FSDP2: skipped, it needs $world GPUs ($gpus here)"
elif ! python3 -c "import moec.fsdp2_bench" 2> /dev/null; then
  echo "FSDP2: skipped, python/moec/fsdp2_bench.py is not in this tree"
else
  # FSDP2_COMPILE: the torch.compile modes of moec.fsdp2_bench to run, one
  # after the other (default per-layer; "none per-layer model" runs all three
  # contenders of tools/multi-gpu.sh, if the call has the time).
  for compile in ${FSDP2_COMPILE:-per-layer}; do
    fsdp=0
    torchrun --nproc-per-node "$world" -m moec.fsdp2_bench --config mixtral-8x7b \
      --micro-batch 1 --seq "$seq" --compile "$compile" --warmup 3 --steps 10 \
      --activation-checkpointing --json "$out/fsdp2-$compile.json" \
      > "$out/fsdp2-$compile.txt" 2>&1 || fsdp=$?
    if (( fsdp != 0 )); then
      tail -n 5 "$out/fsdp2-$compile.txt"
      echo "FSDP2 --compile $compile: exited with status $fsdp (out of memory is 'does not fit'; see $out/fsdp2-$compile.txt)"
    else
      echo "FSDP2 --compile $compile: $(cat "$out/fsdp2-$compile.json")"
    fi
  done
fi
exit "$check"
