"""The pieces of tools/mixtral-8x7b-8gpu.sh that are easier in Python.

    python -m moec.mixtral_8gpu first-layers IN.mlir N OUT.mlir
    python -m moec.mixtral_8gpu layout RECOMMEND.json
    python -m moec.mixtral_8gpu report DIR [--ranks-per-gpu N] [--reserve-gib 1]

``first-layers`` keeps the first N decoder layers of a raised Mixtral
forward (``moec import``'s moe IR, one decoder layer after another: the
input norm, attention, the residual add, the post-attention norm, the
router, ``moe.experts`` and the residual add after it), feeds layer N-1's
output to the final norm and drops the later layers' parameters from the
signature: the same model with fewer layers, every shape unchanged. It
fails, naming what it found, on IR of any other form.

``layout`` prints ``P H CHECKPOINTING`` of the first candidate that fits in
``moec plan --recommend --json`` (schema ``moec-plan-recommend/1``), or fails
when none does.

``report`` reads what ``tools/mixtral-8x7b-8gpu.sh run DIR`` left in
``DIR/out`` (the program's stdout ``train.txt``, its ``--log`` CSV
``metrics.csv``, ``nvidia-smi`` samples ``memory.csv``) and
``DIR/program/manifest.json`` (the compiler's memory plan per rank), checks
that

* the run trained every step it was asked to with finite losses, and the mean
  loss of the last ten steps is below that of the first ten (``loss falls``);
* on every GPU the most memory ``nvidia-smi`` saw in use is within 10% of the
  prediction: the ranks on that GPU times the compiler's per-rank plan
  (state, arena, inputs, kernel scratch) plus ``--reserve-gib`` for the CUDA
  context, NCCL and libraries (the reserve ``moec plan`` adds), once per GPU;

and writes ``DIR/out/report.json`` with those numbers, tokens/s and model
TFLOP/s per GPU (the program's summary: median of the timed steps), and
where the profiled step's time went: its ops' time on the compute stream by
kind (compute, collectives), the rest of the step (host waits for
dispatch/combine counts and collectives the compute stream waited for), and
each group's collective time as the program measured it on the collective
streams. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path

from moec import InputError, json_number, non_negative_float, positive_int
from moec.atomic import write_atomically

#: The check on the measured peak: |measured - predicted| / predicted.
MEMORY_TOLERANCE = 0.10
#: Ops whose time on the compute stream is communication (the fork of a
#: collective onto its stream, or a token exchange that runs in place).
#: ``collective.wait``: the compute stream waiting at a collective's join.
COMMUNICATION_OPS = ("shard.", "moe.dispatch", "moe.combine", "moe.token_shuffle", "collective.wait")


class ReportError(Exception):
    """A check that failed or an input that is not what was expected."""


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: not JSON: {e}") from None


def json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool"}.get(type(value), json.dumps(value))


# --- first-layers ---------------------------------------------------------------

_LAYER_PARAMETER_RE = re.compile(r'moe\.parameter = "model\.layers\.(\d+)\.')


def first_layers(text: str, layers: int) -> str:
    """`text`, a raised Mixtral forward, cut to its first `layers` decoder layers."""
    lines = text.split("\n")
    signature = [i for i, line in enumerate(lines) if "func.func @forward(" in line]
    if len(signature) != 1:
        raise ReportError(f"expected one func.func @forward, found {len(signature)}")
    sig = lines[signature[0]]
    open_paren = sig.index("(")
    close = sig.rindex(") -> ")
    entries = re.split(r", (?=%arg\d+:)", sig[open_paren + 1 : close])
    found = sorted({int(m.group(1)) for e in entries if (m := _LAYER_PARAMETER_RE.search(e))})
    if found != list(range(len(found))) or not found:
        raise ReportError(f"the forward's parameters name decoder layers {found}, expected 0..N-1")
    if not 1 <= layers <= len(found):
        raise ReportError(f"cannot keep {layers} of the model's {len(found)} decoder layers")
    kept = [e for e in entries if not (m := _LAYER_PARAMETER_RE.search(e)) or int(m.group(1)) < layers]
    lines[signature[0]] = sig[: open_paren + 1] + ", ".join(kept) + sig[close:]
    # Each layer ends at the residual add of its moe.experts result.
    ends = []
    for i in range(1, len(lines)):
        experts = re.match(r"\s*(%\w+)(?::\d+)? = moe\.experts ", lines[i - 1])
        if experts and re.match(rf"\s*%\w+ = arith\.addf %\w+, {experts.group(1)} ", lines[i]):
            ends.append(i)
    if len(ends) != len(found):
        raise ReportError(f"found {len(ends)} moe.experts residual adds for {len(found)} decoder layers")
    norms = [i for i in range(ends[-1] + 1, len(lines)) if " = moe.rms_norm " in lines[i]]
    if not norms:
        raise ReportError("no final moe.rms_norm after the last decoder layer")
    output = re.match(r"\s*(%\w+) =", lines[ends[layers - 1]]).group(1)
    final, n = re.subn(r"(= moe\.rms_norm )%\w+,", rf"\g<1>{output},", lines[norms[0]], count=1)
    if n != 1:
        raise ReportError(f"cannot read the final norm's input: {lines[norms[0]].strip()}")
    return "\n".join(lines[: ends[layers - 1] + 1] + [final] + lines[norms[0] + 1 :])


# --- layout -----------------------------------------------------------------------


#: A candidate's keys and their types (a degree is an integer >= 1). "fits"
#: must be a real bool: the string "false" would be true.
CANDIDATE_KEYS = {"expert_parallel_degree": int, "hybrid_shard_degree": int, "activation_checkpointing": str,
                  "fits": bool}


def best_layout(recommend, origin: str) -> tuple[int, int, str]:
    """``P H CHECKPOINTING`` of the first candidate that fits; raises ReportError naming ``origin``, the
    candidate and the key when the file is not of the schema."""
    if not isinstance(recommend, dict) or recommend.get("schema") != "moec-plan-recommend/1":
        found = repr(recommend.get("schema")) if isinstance(recommend, dict) else json_type(recommend)
        raise ReportError(f"{origin}: expected schema moec-plan-recommend/1, found {found}")
    candidates = recommend.get("candidates")
    if not isinstance(candidates, list):
        raise ReportError(f"{origin}: candidates: expected a list, found {json_type(candidates)}")
    for number, candidate in enumerate(candidates, 1):
        if not isinstance(candidate, dict):
            raise ReportError(f"{origin}: candidate {number}: expected an object, found {json_type(candidate)}")
        for key, kind in CANDIDATE_KEYS.items():
            value = candidate.get(key)
            if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1)):
                want = {int: "an integer >= 1", str: "a string", bool: "true or false"}[kind]
                raise ReportError(f"{origin}: candidate {number}: {key} is {json.dumps(value)}, expected {want}")
    for candidate in candidates:
        if candidate["fits"]:
            return (
                candidate["expert_parallel_degree"],
                candidate["hybrid_shard_degree"],
                candidate["activation_checkpointing"],
            )
    raise ReportError(f"{origin}: no layout of {len(candidates)} fits the gpu")


# --- report -----------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "loss" not in (reader.fieldnames or []):
            raise ReportError(f"{path}: no loss column (header {reader.fieldnames})")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            # DictReader files a long row's extra fields under None and fills a short one with None.
            fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, []))
            if fields != len(reader.fieldnames):
                raise ReportError(f"{where}: {fields} fields, the header has {len(reader.fieldnames)}")
            try:
                rows.append({k: float(v) for k, v in row.items()})
            except ValueError as e:
                raise ReportError(f"{where}: {e}") from None
    if not rows:
        raise ReportError(f"{path}: no step")
    return rows


def loss_check(rows: list[dict], steps: int) -> dict:
    losses = [r["loss"] for r in rows]
    if len(rows) != steps:
        raise ReportError(f"the run logged {len(rows)} steps, expected {steps}")
    if not all(math.isfinite(x) for x in losses):
        raise ReportError(f"a loss is not finite: {losses}")
    window = max(1, min(10, len(losses) // 2))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    return {"first_loss": losses[0], "last_loss": losses[-1], "window": window,
            "mean_first": first, "mean_last": last, "falls": last < first}


def read_peaks(path: Path) -> dict[int, int]:
    """The most memory each GPU had in use, bytes (nvidia-smi's MiB)."""
    peaks: dict[int, int] = {}
    for line in Path(path).read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
            continue
        gpu, mib = int(fields[0]), int(fields[1])
        peaks[gpu] = max(peaks.get(gpu, 0), mib << 20)
    if not peaks:
        raise ReportError(f"{path}: no nvidia-smi sample")
    return peaks


PLANNED_KEYS = ("state_bytes", "arena_bytes", "input_bytes", "scratch_bytes", "collective_scratch_bytes")
JOB_KEYS = ("activation_checkpointing", "seq_length", "micro_batch_size")


def read_manifest(path: Path) -> dict:
    """``moec compile``'s manifest.json, with the keys the report reads checked (named by file and key)."""
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("job"), dict):
        raise ReportError(f"{path}: not a moec compile manifest (an object with a job object)")
    missing = [key for key in (*PLANNED_KEYS, "world_size", "mesh") if key not in manifest]
    missing += [f"job.{key}" for key in JOB_KEYS if key not in manifest["job"]]
    if missing:
        raise ReportError(f"{path}: no {', '.join(missing)}")
    for key in PLANNED_KEYS:
        json_number(manifest[key], f"{path}: {key}", integer=True)
    return manifest


def planned_bytes(manifest: dict) -> int:
    return sum(manifest[key] for key in PLANNED_KEYS)


SUMMARY_KEYS = ("median_step_s", "tokens_per_s", "model_tflops")


def parse_output(text: str) -> dict:
    """The summary, the profiled step's op table and its collectives per group."""
    summary = None
    profile: dict[str, float] = {}
    profile_total = profile_step = None
    collectives: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        line = re.sub(r"^\[rank \d+\] ", "", line)
        if line.startswith("summary "):
            try:
                summary = json.loads(line[len("summary "):])
            except json.JSONDecodeError as e:
                raise ReportError(f"the program's summary line is not JSON: {e}") from None
            if not isinstance(summary, dict):
                raise ReportError(f"the program's summary line is {json_type(summary)}, not an object")
            for key in SUMMARY_KEYS:
                json_number(summary.get(key), f"the program's summary line: {key}")
        elif m := re.match(r"profile: ([\d.]+) ms of ops in a ([\d.]+) ms step", line):
            profile_total, profile_step = float(m.group(1)), float(m.group(2))
        elif m := re.match(r"profile: (\S+)\s+(\d+)\s+([\d.]+)\s+[\d.]+%", line):
            profile[m.group(1)] = profile.get(m.group(1), 0.0) + float(m.group(3))
        elif m := re.match(r"step\s+(\d+)\s+collectives:(.*)", line):
            groups = re.findall(r"(\S+) (\d+) in ([\d.]+) ms", m.group(2))
            collectives[int(m.group(1))] = {g: float(ms) for g, _, ms in groups}
    if summary is None:
        raise ReportError("the program printed no summary line")
    if profile and profile_total is None:
        raise ReportError("the program printed its op profile without the 'profile: X ms of ops in a Y ms step' line")
    return {"summary": summary, "profile": profile, "profile_ops_ms": profile_total,
            "profile_step_ms": profile_step, "collectives": collectives}


def time_breakdown(parsed: dict, profile_step: int | None) -> dict | None:
    profile = parsed["profile"]
    if not profile:
        return None
    communication = {k: v for k, v in profile.items() if k.startswith(COMMUNICATION_OPS)}
    compute = {k: v for k, v in profile.items() if k not in communication}
    step_ms = parsed["profile_step_ms"]
    ops_ms = parsed["profile_ops_ms"]
    return {
        "step_ms": step_ms,
        "compute_ms": sum(compute.values()),
        "communication_ops_ms": communication,
        "outside_ops_ms": step_ms - ops_ms,
        "exposed_communication_ms": sum(communication.values()) + (step_ms - ops_ms),
        "top_compute_ops_ms": dict(sorted(compute.items(), key=lambda kv: -kv[1])[:8]),
        "collectives_per_group_ms": parsed["collectives"].get(profile_step) if profile_step else None,
    }


def report(directory: Path, ranks_per_gpu: int, reserve_gib: float, steps: int,
           profile_step: int | None) -> dict:
    out = directory / "out"
    if (out / "report.json").is_dir():
        raise ReportError(f"{out / 'report.json'} is a folder: the report cannot be written there")
    manifest = read_manifest(directory / "program" / "manifest.json")
    try:
        parsed = parse_output((out / "train.txt").read_text())
    except (ReportError, InputError) as e:
        raise ReportError(f"{out / 'train.txt'}: {e}") from None
    loss = loss_check(read_metrics(out / "metrics.csv"), steps)
    per_rank = planned_bytes(manifest)
    predicted = ranks_per_gpu * per_rank + int(reserve_gib * (1 << 30))
    if predicted == 0:
        raise ReportError(f"{directory / 'program' / 'manifest.json'}: plans 0 bytes per rank and --reserve-gib is 0: "
                          "no prediction to compare the peak with")
    peaks = read_peaks(out / "memory.csv")
    gpus = {}
    for gpu, peak in sorted(peaks.items()):
        error = (peak - predicted) / predicted
        gpus[gpu] = {"measured_peak_bytes": peak, "predicted_bytes": predicted,
                     "relative_error": error, "within": abs(error) <= MEMORY_TOLERANCE}
    summary = parsed["summary"]
    result = {
        "layout": {"world_size": manifest["world_size"], "mesh": manifest["mesh"],
                   "activation_checkpointing": manifest["job"]["activation_checkpointing"],
                   "seq_length": manifest["job"]["seq_length"],
                   "micro_batch_size": manifest["job"]["micro_batch_size"]},
        "ranks_per_gpu": ranks_per_gpu,
        "planned_bytes_per_rank": per_rank,
        "loss": loss,
        "memory": gpus,
        "throughput": {"median_step_s": summary["median_step_s"],
                       "tokens_per_s": summary["tokens_per_s"],
                       "tokens_per_s_per_gpu": summary.get("tokens_per_s_per_gpu", summary["tokens_per_s"]),
                       "model_tflops_per_gpu": summary["model_tflops"],
                       "device_used_bytes_rank0": summary.get("device_used_bytes")},
        "time": time_breakdown(parsed, profile_step),
    }
    write_atomically(out / "report.json", (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    return result


def print_report(r: dict) -> list[str]:
    failures = []
    loss = r["loss"]
    print(f"loss: {loss['first_loss']:.4f} at step 1, {loss['last_loss']:.4f} at the last step; "
          f"mean of the first {loss['window']} steps {loss['mean_first']:.4f}, of the last {loss['mean_last']:.4f}"
          f" -> {'falls' if loss['falls'] else 'DOES NOT FALL'}")
    if not loss["falls"]:
        failures.append("the loss does not fall")
    for gpu, m in r["memory"].items():
        print(f"memory gpu {gpu}: measured peak {m['measured_peak_bytes'] / 2**30:.2f} GiB, predicted "
              f"{m['predicted_bytes'] / 2**30:.2f} GiB ({r['ranks_per_gpu']} rank(s) x "
              f"{r['planned_bytes_per_rank'] / 2**30:.2f} GiB planned + reserve): "
              f"{100 * m['relative_error']:+.1f}% {'within' if m['within'] else 'NOT within'} 10%")
        if not m["within"]:
            failures.append(f"gpu {gpu}'s peak is not within 10% of the plan")
    t = r["throughput"]
    print(f"throughput: median step {t['median_step_s']:.4f} s, {t['tokens_per_s']:.0f} tokens/s "
          f"({t['tokens_per_s_per_gpu']:.0f} per GPU), {t['model_tflops_per_gpu']:.1f} model TFLOP/s per GPU")
    time = r["time"]
    if time:
        print(f"profiled step: {time['step_ms']:.2f} ms = compute ops {time['compute_ms']:.2f} ms + "
              f"communication ops on the compute stream {sum(time['communication_ops_ms'].values()):.2f} ms + "
              f"outside any op {time['outside_ops_ms']:.2f} ms; exposed communication "
              f"{time['exposed_communication_ms']:.2f} ms")
        for name, ms in time["communication_ops_ms"].items():
            print(f"  {name}: {ms:.2f} ms on the compute stream")
        if time["collectives_per_group_ms"]:
            print("  collectives per group (their streams): " +
                  ", ".join(f"{g} {ms:.2f} ms" for g, ms in time["collectives_per_group_ms"].items()))
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moec.mixtral_8gpu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("first-layers")
    p.add_argument("input", type=Path)
    p.add_argument("layers", type=int)
    p.add_argument("output", type=Path)
    p = sub.add_parser("layout")
    p.add_argument("recommend", type=Path)
    p = sub.add_parser("report")
    p.add_argument("dir", type=Path)
    p.add_argument("--ranks-per-gpu", type=positive_int, default=1)
    p.add_argument("--reserve-gib", type=non_negative_float, default=1.0)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--profile-step", type=int)
    args = parser.parse_args(argv)
    try:
        if args.command == "first-layers":
            write_atomically(args.output, first_layers(args.input.read_text(), args.layers).encode())
        elif args.command == "layout":
            print(*best_layout(read_json(args.recommend), str(args.recommend)))
        else:
            failures = print_report(report(args.dir, args.ranks_per_gpu, args.reserve_gib, args.steps,
                                           args.profile_step))
            if failures:
                print("FAILED: " + "; ".join(failures))
                return 1
            print("every check passed")
    except (ReportError, OSError, ValueError) as error:  # InputError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
