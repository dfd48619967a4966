#!/usr/bin/env bash
# The two-GPU check (issue 18), in two halves like tools/gpu-tests.sh:
#
#   tools/multi-gpu.sh prepare DIR   # where moec is: every program as CUDA
#                                    # sources (moec compile --emit cuda),
#                                    # the runtime libraries, CLI11's headers
#                                    # (for moert-alltoall-bench), the tokens
#                                    # and the CPU reference's runs, into DIR
#   tools/multi-gpu.sh run DIR       # on a machine with two GPUs (nvcc,
#                                    # NCCL, python3 with numpy; torch and
#                                    # transformers for the benchmark)
#
# The run half builds every program in parallel, then:
#
# (a) correctness: the tiny Mixtral with E = 8 in fp32 at W = 2 under
#     (P, H) = (2, 1) with both dispatchers and the token shuffle on and off,
#     and (1, 2), each under every routing (aux_loss, none, sinkhorn,
#     balanced): 20 programs, each launched as 2 ranks (one process per GPU,
#     real NCCL), 3 steps of 2 sequences of 64 tokens per rank. Compared
#     (moec.check_gpu: loss, ce, aux, grad norm each step and every final
#     parameter, relative L2 < 1e-4, max abs and relative L2 reported): with
#     the same program on 2 simulated ranks on one GPU (the thread world:
#     the parameters) and the CPU reference's partitioned run (the metrics);
#     for aux_loss and none, which route each token alone, also with the
#     one-GPU program on the 4 sequences together (metrics and parameters).
#     sinkhorn and balanced route each rank's micro-batch as one group (as
#     Megatron-Core does), which a one-GPU program of the global batch does
#     not (it routes all 4 sequences together: docs/partitioning.md), so
#     for them the one-GPU comparison is the simulated ranks'.
# (b) faults: the (2, 1) program training with a checkpoint every 10 steps;
#     rank 1 is killed (SIGKILL) mid-run; rank 0 must end within 60 s,
#     non-zero, with a message naming the dead peer (world rank 1) and the
#     collective it was in; the run resumed from the last checkpoint must
#     continue the loss sequence of an uninterrupted run (relative 1e-5).
# (c) dispatch speed: mixtral-8x7b-2l (B 4, S 2048, fp32 masters, bf16
#     compute) under (2, 1): the profiled step's moe.dispatch and
#     moe.combine (the op profile) and the all_to_all calls of the expert
#     group (bytes, time, bus bandwidth: moert/CollectiveTimes.h), against
#     NCCL's own all-to-all of the same bytes per call on the same GPUs
#     (moert-alltoall-bench, grouped send/recv and ncclAlltoAll; bus
#     bandwidth as nccl-tests defines it for all-to-all: algbw·(n-1)/n).
#     Target: 80%.
# (d) benchmark: PyTorch FSDP2 on the Hugging Face model (python -m
#     moec.fsdp2_bench: eager, torch.compile per layer and of the whole
#     sharded model; the fastest named) and moec under
#     (2, 1) and (1, 2) on two GPUs, and moec on one GPU (the scaling
#     efficiency's base), 8192 tokens per GPU per step: tokens/s and model
#     TFLOP/s per GPU, peak memory, ratios; the per-collective time of moec's
#     profiled steps.
#
# With one GPU the run half does what one GPU can and says what it
# skipped: (a) on simulated ranks against the CPU reference and the one-GPU
# programs; (b) the kill and resume on one process of 2 simulated ranks;
# (c) the (2, 1) program on 2 simulated ranks (mechanics, no speed) and the
# NCCL benchmark on one rank; (d) FSDP2 on one GPU and the one-GPU program.
# It then exits 3, naming every skipped part: one GPU never passes the check.
#
# Results: DIR/out (logs, dumps, JSON), DIR/out/summary.md. Exits non-zero
# on the first failed check. MG_BENCH_WARMUP and MG_BENCH_STEPS (3, 10) set
# the benchmark's steps; M2L_ONNX (prepare) a ready export of
# mixtral-8x7b-2l (else python -m moec.export makes one: needs torch).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mode="${1:-}"
dir="${2:-}"
if [[ -z "$mode" || -z "$dir" || ( "$mode" != prepare && "$mode" != run ) ]]; then
  echo "usage: $0 prepare|run DIR" >&2
  exit 2
fi
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"

routings=(aux_loss none sinkhorn balanced)
# The layouts: name, P, H.
layouts=("p2h1 2 1" "p1h2 1 2")
# The variants of a layout with P > 1: name and moec flags.
dispatches=("a2a:--moe-all-to-all-dispatcher=true"
            "gather:--moe-all-to-all-dispatcher=false"
            "a2a-shuffle:--moe-all-to-all-dispatcher=true --global-token-shuffle"
            "gather-shuffle:--moe-all-to-all-dispatcher=false --global-token-shuffle")
# Prints "NAME ROUTING FLAGS..." for every correctness case.
cases() {
  local layout name p h routing variant
  for layout in "${layouts[@]}"; do
    read -r name p h <<< "$layout"
    local flags="--world-size $((p * h)) --expert-parallel-degree $p --hybrid-shard-degree $h"
    for routing in "${routings[@]}"; do
      if (( p == 1 )); then
        echo "$name-$routing $routing $flags"
        continue
      fi
      for variant in "${dispatches[@]}"; do
        echo "$name-${variant%%:*}-$routing $routing $flags ${variant#*:}"
      done
    done
  done
}
# The fault test's program: (2, 1), all-to-all, aux_loss.
fault_case=p2h1-a2a-aux_loss
# The benchmark's job (docs/benchmarks.md): fp32 masters, bf16 compute.
m2l_job='"micro_batch_size": 4, "seq_length": 2048, "bf16": true, "router_aux_loss_coef": 0.02'
m2l_programs=("m2l-one 1 1" "m2l-p2h1 2 1" "m2l-p1h2 1 2")

if [[ "$mode" == prepare ]]; then
  moec="${MOEC:-$root/build/bin/moec}"
  build="${MOEC_BUILD:-$root/build}"
  cudnn="$(sed -n 's/^MOEC_CUDNN_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt")"
  nccl="$(sed -n 's/^MOEC_NCCL_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt")"
  cli11="$(sed -n 's/^MOEC_CLI11_INCLUDE_DIR:PATH=//p' "$build/CMakeCache.txt")"
  if [[ -z "$cudnn" || -z "$nccl" || -z "$cli11" || ! -f "$build/runtime/libmoert_cudnn.a" ]]; then
    echo "error: $build has no moert_cudnn library, no NCCL or no CLI11 (build moec with CUDA, NCCL and cuDNN)" >&2
    exit 1
  fi
  mkdir -p "$dir/lib" "$dir/data" "$dir/include"
  cp "$build/runtime/libmoert.a" "$build/runtime/libmoert_hf.a" "$build/runtime/libmoert_cudnn.a" "$dir/lib/"
  # moert-alltoall-bench's options are CLI11's (header-only), built there.
  rm -rf "$dir/include/CLI" && cp -r "$cli11/CLI" "$dir/include/"
  printf 'cudnn=%q\nnccl=%q\n' "$cudnn" "$nccl" > "$dir/lib/paths.sh"
  e8="$root/test/Inputs/train/tiny-e8.onnx"
  tokens="$root/test/Inputs/fortunes/train.pb"
  python3 -m moec.tokens "$tokens" "$dir/data/train.bin"
  common=(--micro-batch-size 2 --seq-length 64)
  while read -r name routing flags; do
    rm -rf "$dir/mg-$name"
    # shellcheck disable=SC2086 # the flags are words
    "$moec" compile "$e8" "${common[@]}" --moe-load-balancing "$routing" $flags \
      --emit cuda -o "$dir/mg-$name" > /dev/null
    # The CPU reference's run of the same layout on 2 simulated ranks: the
    # metrics every step (the reference does not dump partitioned runs).
    # shellcheck disable=SC2086
    "$moec" train "$e8" --reference --tokens "$tokens" --steps 3 "${common[@]}" \
      --moe-load-balancing "$routing" $flags --log "$dir/cpu-$name.csv" > /dev/null
  done < <(cases)
  # The one-GPU programs on the global batch (4 sequences) and the CPU
  # reference's run of them, for the per-token routings.
  for routing in aux_loss none; do
    rm -rf "$dir/one-$routing" "$dir/cpu-one-$routing"
    "$moec" compile "$e8" --micro-batch-size 4 --seq-length 64 --moe-load-balancing "$routing" \
      --emit cuda -o "$dir/one-$routing" > /dev/null
    "$moec" train "$e8" --reference --tokens "$tokens" --steps 3 --micro-batch-size 4 --seq-length 64 \
      --moe-load-balancing "$routing" --dump "$dir/cpu-one-$routing" --log "$dir/cpu-one-$routing.csv" > /dev/null
  done
  # The checks compare metrics and final parameters: the reference dumps'
  # AdamW moments and per-step gradients stay here.
  find "$dir" -type d \( -path "*/final/exp_avg*" -o -path "*/step_*/grad" \) -prune -exec rm -rf {} +
  # mixtral-8x7b-2l without weights, and its programs.
  m2l="${M2L_ONNX:-}"
  if [[ -z "$m2l" ]]; then
    m2l="$dir/m2l.onnx"
    python3 -m moec.export --config mixtral-8x7b-2l --no-weights --dynamic -o "$m2l"
  fi
  for program in "${m2l_programs[@]}"; do
    read -r name p h <<< "$program"
    printf '{%s, "world_size": %d, "expert_parallel_degree": %d, "hybrid_shard_degree": %d}\n' \
      "$m2l_job" $((p * h)) "$p" "$h" > "$dir/$name.json"
    rm -rf "${dir:?}/$name"
    "$moec" compile "$m2l" --config "$dir/$name.json" --emit cuda -o "$dir/$name" 2>&1 | grep '^memory plan' || true
    [[ -f "$dir/$name/train_step.cu" ]] || { echo "error: moec compile wrote no $dir/$name" >&2; exit 1; }
  done
  # Random ids of the benchmark (vocabulary 32000): enough blocks for 2 ranks
  # and every step (the driver reads them modulo the file's blocks).
  python3 -c "import numpy as np, sys; np.random.default_rng(0).integers(0, 32000, size=(2 * 4 * 16, 2048), dtype=np.int64).astype('<i8').tofile(sys.argv[1])" \
    "$dir/data/m2l.bin"
  echo "prepared $dir: $(cases | wc -l) correctness programs, ${#m2l_programs[@]} benchmark programs ($(du -sh "$dir" | cut -f1))"
  exit 0
fi

# ---------------------------------------------------------------- run half
# shellcheck disable=SC1091
source "$dir/lib/paths.sh"
out="$dir/out"
rm -rf "$out" && mkdir -p "$out" "$dir/bin"
gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
skipped=()
skip() {
  echo "SKIPPED (needs 2 GPUs, $gpus here): $*"
  skipped+=("$*")
}
failed=0
fail() {
  echo "FAIL: $*"
  failed=1
}
summary="$out/summary.md"
echo "# tools/multi-gpu.sh run on $gpus GPU(s), $(date -u +%FT%TZ)" > "$summary"
started=$SECONDS
elapsed() { echo "[$((SECONDS - started)) s]"; }

echo "== building $(ls -d "$dir"/mg-* "$dir"/one-* "$dir"/m2l-*/ 2>/dev/null | wc -l) programs and moert-alltoall-bench $(elapsed)"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
{
  find "$dir" -mindepth 2 -maxdepth 2 -name build.sh -printf 'sh %p\n'
  echo "\"$nvcc\" -std=c++17 -O2 -I\"$root/runtime/include\" -I\"$dir/include\" \"$root/runtime/tools/moert-alltoall-bench.cpp\" \
    -o \"$dir/bin/moert-alltoall-bench\" \"$dir/lib/libmoert.a\" \"$dir/lib/libmoert_hf.a\" \
    -L\"$(dirname "$nccl")\" -Xlinker -rpath=\"$(dirname "$nccl")\" -lnccl -lcublas -lcublasLt"
} | MOERT_INCLUDE_DIR="$root/runtime/include" MOERT_LIBRARY_DIR="$dir/lib" \
    xargs -P "$(nproc)" -I{} sh -c '{}' > "$out/build.log" 2>&1 ||
  { tail -50 "$out/build.log"; echo "FAIL: the build"; exit 1; }
echo "built $(elapsed)"

# launch LOG N PROGRAM ARGS...: N ranks of PROGRAM as a torchrun-style job
# on this host (rank r: LOCAL_RANK r, so GPU r; rank 0 listens on
# LAUNCH_PORT, else a random port), rank r's output in
# LOG.rankR; when a rank fails, the others get SIGTERM (SIGKILL after 10 s).
# Returns the first failed rank's status; LOG holds every rank's lines,
# prefixed "[rank R] ".
launch() {
  local log="$1" n="$2" r status=0 pids=() port token
  shift 2
  port="${LAUNCH_PORT:-$((20000 + RANDOM % 30000))}"
  token="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  for ((r = 0; r < n; r++)); do
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 \
      MASTER_PORT=$port MOERT_JOB_TOKEN=$token "$@" > "$log.rank$r" 2>&1 &
    pids+=($!)
  done
  local left=$n pid s
  while ((left > 0)); do
    for r in "${!pids[@]}"; do
      pid="${pids[r]}"
      [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null || continue
      s=0
      wait "$pid" || s=$?
      pids[r]=""
      left=$((left - 1))
      if ((s != 0 && status == 0)); then
        status=$s
        echo "launch: rank $r exited with status $s; stopping the other ranks"
        for pid in "${pids[@]}"; do
          [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
        done
        (sleep 10; for pid in "${pids[@]}"; do [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true; done) &
      fi
    done
    sleep 0.1
  done
  for ((r = 0; r < n; r++)); do
    sed "s/^/[rank $r] /" "$log.rank$r"
  done > "$log"
  return "$status"
}

# compare CASE AGAINST REF_DIR REF_LOG GOT_DIR GOT_LOG: moec.check_gpu at
# 1e-4; appends CASE, AGAINST, the worst metric error, the parameters' max
# abs and worst relative L2 and the verdict to $table (else the summary);
# fails when the check does.
compare() {
  local name="$1" against="$2" log="$out/check-$1-$2.txt" verdict=PASS
  python3 -m moec.check_gpu --reference "$3" --reference-log "$4" --gpu "$5" --gpu-log "$6" \
    --tolerance 1e-4 > "$log" 2>&1 || verdict=FAIL
  local params
  params="$(sed -n 's/.*compared: max abs err \([^,]*\), worst rel L2 err \([^ ]*\).*/\1 | \2/p' "$log" || true)"
  report "$name" "$against" "$log" "$verdict" "${params:-? | ?}"
}

# report CASE AGAINST LOG VERDICT [PARAMS]: the worst metric of LOG, a row
# of the table and a line; a FAIL prints LOG and fails the run.
report() {
  local name="$1" against="$2" log="$3" verdict="$4" params="${5:- | }" metric
  metric="$(grep -o 'rel err [0-9.e+-]*\|rel err nan' "$log" | awk '{print $3}' | sort -g | tail -1 || true)"
  echo "| $name | $against | ${metric:-?} | $params | $verdict |" >> "${table:-$summary}"
  echo "$name vs $against: metrics ${metric:-?}${5:+, parameters (max abs | rel L2) $5}: $verdict"
  if [[ "$verdict" == FAIL ]]; then
    cat "$log"
    fail "$name against $against"
    return 1
  fi
}

# compare_metrics CASE AGAINST REF_LOG GOT_LOG: the metrics alone (loss,
# ce, aux, grad norm every step; relative 1e-4), a row of the table.
compare_metrics() {
  local name="$1" against="$2" log="$out/check-$1-$2.txt" verdict=PASS
  python3 -c "import sys; from moec.check_gpu import check_metrics, read_log; sys.exit(0 if check_metrics(read_log(sys.argv[1]), read_log(sys.argv[2]), 1e-4) else 1)" \
    "$3" "$4" > "$log" 2>&1 || verdict=FAIL
  report "$name" "$against" "$log" "$verdict"
}

echo "== (a) correctness: W = 2, 3 fp32 steps $(elapsed)"
{
  echo
  echo "## (a) correctness (relative L2 < 1e-4)"
  echo
  echo "| case | against | worst metric rel. err | params max abs | params worst rel. L2 | |"
  echo "|---|---|---|---|---|---|"
} >> "$summary"
run=(--tokens "$dir/data/train.bin" --steps 3)
for routing in aux_loss none; do
  "$dir/one-$routing/train_step" "${run[@]}" --log "$out/one-$routing.csv" --dump "$out/one-$routing" > "$out/one-$routing.txt"
  compare "one-$routing" "CPU reference" "$dir/cpu-one-$routing" "$dir/cpu-one-$routing.csv" \
    "$out/one-$routing" "$out/one-$routing.csv"
done
# check_case NAME ROUTING INDEX: one case on simulated ranks and (two GPUs)
# as two NCCL ranks, and its comparisons; its rows in $out/rows-NAME.md.
# Fails when a run or a check does.
check_case() {
  local name="$1" routing="$2" index="$3" program="$dir/mg-$1/train_step" status=0
  table="$out/rows-$name.md"
  : > "$table"
  "$program" "${run[@]}" --simulate-ranks 2 --log "$out/$name-sim.csv" --dump "$out/$name-sim" \
    > "$out/$name-sim.txt" 2>&1 || { cat "$out/$name-sim.txt"; echo "FAIL: $name on simulated ranks"; return 1; }
  if ((gpus >= 2)); then
    LAUNCH_PORT=$((21000 + 7 * index)) launch "$out/$name-nccl.txt" 2 "$program" "${run[@]}" \
      --log "$out/$name-nccl.csv" --dump "$out/$name-nccl" ||
      { cat "$out/$name-nccl.txt"; echo "FAIL: $name: the 2-rank run"; return 1; }
    compare "$name" "2 simulated ranks on one GPU" "$out/$name-sim" "$out/$name-sim.csv" \
      "$out/$name-nccl" "$out/$name-nccl.csv" || status=1
    compare_metrics "$name" "CPU reference, 2 simulated ranks" "$dir/cpu-$name.csv" "$out/$name-nccl.csv" ||
      status=1
    if [[ "$routing" == aux_loss || "$routing" == none ]]; then
      compare "$name" "one-GPU program, global batch" "$out/one-$routing" "$out/one-$routing.csv" \
        "$out/$name-nccl" "$out/$name-nccl.csv" || status=1
    fi
  else
    # One GPU: the simulated ranks against the references of the real ones.
    compare_metrics "$name-sim" "CPU reference, 2 simulated ranks" "$dir/cpu-$name.csv" "$out/$name-sim.csv" ||
      status=1
    if [[ "$routing" == aux_loss || "$routing" == none ]]; then
      compare "$name-sim" "one-GPU program, global batch" "$out/one-$routing" "$out/one-$routing.csv" \
        "$out/$name-sim" "$out/$name-sim.csv" || status=1
    fi
  fi
  return "$status"
}
# The cases run 4 at a time (each is small: the GPUs and the CPUs have room).
case_pids=()
case_names=()
index=0
while read -r name routing _; do
  while (($(jobs -rp | wc -l) >= 4)); do
    sleep 0.2
  done
  check_case "$name" "$routing" "$index" > "$out/case-$name.log" 2>&1 &
  case_pids+=($!)
  case_names+=("$name")
  index=$((index + 1))
done < <(cases)
for i in "${!case_pids[@]}"; do
  name="${case_names[i]}"
  if ! wait "${case_pids[i]}"; then
    fail "correctness case $name"
  fi
  grep -E ': (PASS|FAIL)$|^FAIL' "$out/case-$name.log" || true
  [[ -f "$out/rows-$name.md" ]] && cat "$out/rows-$name.md" >> "$summary"
done
((gpus >= 2)) || skip "(a) the 20 cases as 2 ranks on 2 GPUs through NCCL (ran on 2 simulated ranks instead)"

echo "== (b) faults: a rank killed mid-run, the survivor's message, the resumed loss sequence $(elapsed)"
echo -e "\n## (b) faults\n" >> "$summary"
program="$dir/mg-$fault_case/train_step"
fault=(--tokens "$dir/data/train.bin" --total-steps 5000 --save-interval 10)
# wait_for_checkpoint DIR STEPS PID...: until DIR/latest names a step >= STEPS
# (60 s at most, while the processes live); prints the step.
wait_for_checkpoint() {
  local ckpt="$1" least="$2" step=0 i
  shift 2
  for ((i = 0; i < 600; i++)); do
    step="$(sed -n 's/^step_//p' "$ckpt/latest" 2>/dev/null || true)"
    if [[ -n "$step" ]] && ((step >= least)); then
      echo "$step"
      return 0
    fi
    kill -0 "$@" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}
# launch_two LOG PROGRAM ARGS...: PROGRAM as 2 ranks on 2 GPUs;
# sim_one LOG PROGRAM ARGS...: PROGRAM on 2 simulated ranks on one GPU.
launch_two() {
  local log="$1"
  shift
  launch "$log" 2 "$@"
}
sim_one() {
  local log="$1"
  shift
  "$@" --simulate-ranks 2 > "$log" 2>&1
}
# resume_check RUNNER: resumes from $out/fault-ckpt for 5 steps and runs the
# same steps uninterrupted, each with RUNNER (launch_two or sim_one); the
# losses must agree to 1e-5.
resume_check() {
  local k
  k="$(sed -n 's/^step_//p' "$out/fault-ckpt/latest")"
  echo "resuming after step $k (the last checkpoint before the kill)"
  # A resumed run appends to its log: give it the header.
  echo "step,loss,ce_loss,aux_loss,z_loss,grad_norm,lr,step_seconds,tokens_per_s,model_tflops,peak_bytes" \
    > "$out/fault-resumed.csv"
  "$@" "$out/fault-resumed.txt" "$program" "${fault[@]}" --steps 5 --resume \
    --checkpoint-dir "$out/fault-ckpt" --log "$out/fault-resumed.csv" ||
    { cat "$out/fault-resumed.txt"; fail "the resumed run"; return; }
  "$@" "$out/fault-full.txt" "$program" "${fault[@]}" --steps $((k + 5)) \
    --log "$out/fault-full.csv" || { cat "$out/fault-full.txt"; fail "the uninterrupted run"; return; }
  if python3 -c "import csv, sys; read = lambda f: {r['step']: float(r['loss']) for r in csv.DictReader(open(f))}; a, b = read(sys.argv[1]), read(sys.argv[2]); steps = sorted(a, key=int); assert steps and all(s in b for s in steps), (steps, sorted(b, key=int)); worst = max(abs(a[s] - b[s]) / abs(b[s]) for s in steps); print('resumed steps %s: losses %s, uninterrupted %s, worst relative difference %.3g' % (', '.join(steps), [a[s] for s in steps], [b[s] for s in steps], worst)); sys.exit(worst > 1e-5)" \
      "$out/fault-resumed.csv" "$out/fault-full.csv" | tee -a "$summary"; then
    echo "resume continues the loss sequence: PASS" | tee -a "$summary"
  else
    fail "the resumed losses differ from the uninterrupted run's"
  fi
}
rm -rf "$out/fault-ckpt"
if ((gpus >= 2)); then
  port=$((20000 + RANDOM % 30000))
  token="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  pids=()
  for r in 0 1; do
    MOERT_COLLECTIVE_TIMEOUT=30 RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 \
      MASTER_ADDR=127.0.0.1 MASTER_PORT=$port MOERT_JOB_TOKEN=$token \
      "$program" "${fault[@]}" --steps 5000 --checkpoint-dir "$out/fault-ckpt" \
      --log "$out/fault-killed.csv" > "$out/fault-rank$r.txt" 2>&1 &
    pids+=($!)
  done
  if saved="$(wait_for_checkpoint "$out/fault-ckpt" 30 "${pids[@]}")"; then
    kill -KILL "${pids[1]}"
    killed=$SECONDS
    echo "killed rank 1 (SIGKILL) after checkpoint step_$saved"
    status=0
    for ((i = 0; i < 900; i++)); do
      kill -0 "${pids[0]}" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "${pids[0]}" 2>/dev/null; then
      kill -KILL "${pids[0]}"
      wait "${pids[0]}" || true
      fail "rank 0 still ran 90 s after rank 1 was killed"
    else
      wait "${pids[0]}" || status=$?
      took=$((SECONDS - killed))
      wait "${pids[1]}" 2> /dev/null || true
      message="$(grep -E 'moert watchdog' "$out/fault-rank0.txt" | head -1 || true)"
      echo "rank 0 ended after ${took} s with status $status: ${message:-no watchdog message}" | tee -a "$summary"
      ((status != 0)) || fail "rank 0 exited 0 after its peer was killed"
      ((took <= 60)) || fail "rank 0 took ${took} s (more than 60) to end"
      # moert watchdog: rank 0 of 2 in group 'G': COLLECTIVE did not finish:
      # world rank 1 is gone (...) -- or, for a CUDA graph's replay, "a CUDA
      # graph of the step holding COLLECTIVE in group 'G', ...".
      if grep -Eq "moert watchdog: .*(all_to_all|all_gather|all_reduce|reduce_scatter|broadcast|barrier).* did not finish: world rank 1 is gone" \
          "$out/fault-rank0.txt"; then
        echo "the message names the dead peer and the collective: PASS" | tee -a "$summary"
      else
        tail -20 "$out/fault-rank0.txt"
        fail "rank 0's message does not name the dead peer (world rank 1) and the collective"
      fi
    fi
    resume_check launch_two
  else
    kill -KILL "${pids[@]}" 2>/dev/null || true
    tail -20 "$out/fault-rank0.txt" "$out/fault-rank1.txt"
    fail "no checkpoint of step 30 within 60 s"
  fi
else
  # One GPU: the kill and the resume on one process of 2 simulated ranks.
  "$program" "${fault[@]}" --steps 5000 --simulate-ranks 2 --checkpoint-dir "$out/fault-ckpt" \
    --log "$out/fault-killed.csv" > "$out/fault-sim.txt" 2>&1 &
  pid=$!
  if saved="$(wait_for_checkpoint "$out/fault-ckpt" 30 "$pid")"; then
    kill -KILL "$pid"
    wait "$pid" 2> /dev/null || true
    echo "killed the simulated job (SIGKILL) after checkpoint step_$saved" | tee -a "$summary"
    resume_check sim_one
  else
    kill -KILL "$pid" 2>/dev/null || true
    tail -20 "$out/fault-sim.txt"
    fail "no checkpoint of step 30 within 60 s (simulated ranks)"
  fi
  skip "(b) the surviving rank's end within 60 s and its message (needs 2 processes on 2 GPUs; the resume ran on simulated ranks)"
fi

echo "== (c) dispatch speed and (d) benchmark $(elapsed)"
warmup="${MG_BENCH_WARMUP:-3}"
steps="${MG_BENCH_STEPS:-10}"
total=$((warmup + steps))
# Timed runs are not profiled (a profiled step runs eagerly, its ops
# timed one by one); the profile and the per-collective breakdown come from
# a separate run of 3 steps, the third profiled.
bench=(--tokens "$dir/data/m2l.bin" --steps "$total" --bench-warmup "$warmup")
profile=(--tokens "$dir/data/m2l.bin" --steps 3 --profile-step 3)
echo "-- moec on one GPU"
"$dir/m2l-one/train_step" "${bench[@]}" > "$out/bench-m2l-one.txt" 2>&1 ||
  { tail -20 "$out/bench-m2l-one.txt"; fail "moec on one GPU"; }
grep -E '^summary' "$out/bench-m2l-one.txt" || true
fsdp=()
# Three FSDP2 contenders: eager, each decoder layer compiled (as torchtitan
# compiles blocks) and the whole sharded model compiled (as Hugging Face
# Accelerate does); the table names the fastest (moec.fsdp2_bench, whose
# COMPILE_MODES names each).
for compile in none per-layer model; do
  name="$(python3 -c 'import sys; from moec.fsdp2_bench import COMPILE_MODES; print(COMPILE_MODES[sys.argv[1]])' "$compile")"
  echo "-- $name on $((gpus >= 2 ? 2 : 1)) GPU(s)"
  if torchrun --nproc-per-node "$((gpus >= 2 ? 2 : 1))" -m moec.fsdp2_bench --config mixtral-8x7b-2l \
      --micro-batch 4 --seq 2048 --compile "$compile" --warmup "$warmup" --steps "$steps" \
      --json "$out/$name.json" > "$out/$name.txt" 2>&1; then
    fsdp+=("$out/$name.json")
    grep -E 'fsdp2_bench: fsdp2' "$out/$name.txt" || true
  else
    tail -30 "$out/$name.txt"
    fail "$name"
  fi
done
moec_runs=()
if ((gpus >= 2)); then
  for program in m2l-p2h1 m2l-p1h2; do
    echo "-- moec $program on 2 GPUs"
    if launch "$out/bench-$program.txt" 2 "$dir/$program/train_step" "${bench[@]}"; then
      moec_runs+=("$program=$out/bench-$program.txt.rank0")
      grep -E '^summary' "$out/bench-$program.txt.rank0" || true
    else
      tail -20 "$out/bench-$program.txt"
      fail "moec $program on 2 GPUs"
    fi
    launch "$out/profile-$program.txt" 2 "$dir/$program/train_step" "${profile[@]}" ||
      { tail -20 "$out/profile-$program.txt"; fail "moec $program profiled on 2 GPUs"; }
    grep -E 'collective:|profile: moe.(dispatch|combine)' "$out/profile-$program.txt.rank0" || true
  done
else
  echo "-- moec m2l-p2h1 on 2 simulated ranks (mechanics of the profile and the breakdown; not a speed)"
  sim_one "$out/profile-m2l-p2h1-sim.txt" "$dir/m2l-p2h1/train_step" "${profile[@]}" ||
    { tail -20 "$out/profile-m2l-p2h1-sim.txt"; fail "m2l-p2h1 on simulated ranks"; }
  grep -E 'collective:|profile: moe.(dispatch|combine)' "$out/profile-m2l-p2h1-sim.txt" || true
  skip "(d) moec (2,1) and (1,2) on 2 GPUs and FSDP2 on 2 GPUs (FSDP2 ran on 1 GPU)"
fi
python3 -c "import sys, json; from pathlib import Path; from moec.fsdp2_bench import comparison, comparison_table; fsdp = [Path(p) for p in sys.argv[2].split()]; runs = [tuple(r.split('=', 1)) for r in sys.argv[3].split()]; result = comparison(fsdp, [(n, Path(p)) for n, p in runs], ('moec-one-gpu', Path(sys.argv[1]))); Path(sys.argv[4]).write_text(json.dumps(result, indent=1) + '\n'); print(comparison_table(result))" \
  "$out/bench-m2l-one.txt" "${fsdp[*]}" "${moec_runs[*]}" "$out/bench.json" > "$out/bench-table.md" ||
  fail "the benchmark table"
{ echo -e "\n## (d) benchmark\n"; cat "$out/bench-table.md"; } | tee -a "$summary"
for f in "$out"/profile-m2l-*.txt.rank0 "$out"/profile-m2l-*-sim.txt; do
  [[ -f "$f" ]] || continue
  echo -e "\n$(basename "$f"): the profiled step's collectives by group and kind:\n" >> "$summary"
  grep -E 'collective:' "$f" | sed 's/^/    /' >> "$summary" || true
done

echo "-- NCCL's own all-to-all (moert-alltoall-bench) for the dispatch's bytes"
prof="$out/profile-m2l-p2h1.txt.rank0"
ranks=2
if ((gpus < 2)); then
  prof="$out/profile-m2l-p2h1-sim.txt"
  ranks=1
fi
if per_call="$(python3 -m moec.dispatch_speed --profile "$prof" --per-call-bytes)"; then
  launch "$out/nccl-a2a.txt" "$ranks" "$dir/bin/moert-alltoall-bench" --bytes "$per_call" --bytes 128M \
    --bytes 1G --json "$out/nccl-a2a.json" || { cat "$out/nccl-a2a.txt"; fail "moert-alltoall-bench"; }
  cat "$out/nccl-a2a.txt"
  speed=0
  python3 -m moec.dispatch_speed --profile "$prof" --nccl "$out/nccl-a2a.json" --ranks "$ranks" \
    > "$out/dispatch.txt" || speed=$?
  cat "$out/dispatch.txt"
  ((speed == 0)) || fail "the dispatch's all-to-all against NCCL's (exit $speed; 4: below 80% of its bus bandwidth)"
  { echo -e "\n## (c) dispatch speed\n"; sed 's/^/    /' "$out/dispatch.txt"; } >> "$summary"
else
  fail "no all_to_all of the expert group in $prof"
fi
((gpus >= 2)) || skip "(c) the dispatch's and NCCL's all-to-all between 2 GPUs (ran on simulated ranks and one NCCL rank: no bus bandwidth)"

echo "done $(elapsed)"
if ((failed)); then
  echo "multi-gpu: FAILED (see above and $summary)"
  exit 1
fi
if ((${#skipped[@]} > 0)); then
  {
    echo -e "\n## not run here\n"
    for s in "${skipped[@]}"; do echo "- $s"; done
  } >> "$summary"
  echo "multi-gpu: INCOMPLETE: ${#skipped[@]} part(s) need 2 GPUs and were skipped:"
  printf '  - %s\n' "${skipped[@]}"
  exit 3
fi
echo "multi-gpu: all checks passed"
