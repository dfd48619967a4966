"""Writes small synthetic results for the test of moec.fsdp2_bench's comparison.

    python fsdp2_reports.py DIR

DIR/fsdp2-eager.json, DIR/fsdp2-compile.json, DIR/fsdp2-compile-model.json:
two GPUs, 0.5, 0.4 and 0.35 s per step of 8192 tokens per GPU; DIR/one.txt: a one-GPU moec program's output,
0.25 s per step; DIR/p2h1.txt: rank 0 of a two-rank moec run, 0.3 s per
step (its summary's tokens_per_s_per_gpu); DIR/p1h2.txt: the same through a
launcher that prefixes "[rank 0] ", 0.32 s per step; DIR/unfinished.txt: a
run without its summary line.
"""

import json
import sys
from pathlib import Path

TOKENS = 8192
FLOPS = 46.03e12


def fsdp(what: str, step_s: float) -> str:
    result = {"what": what, "ranks": 2, "step_s": step_s, "tokens_per_s_per_gpu": TOKENS / step_s,
              "model_tflops_per_gpu": FLOPS / step_s / 1e12, "peak_bytes": 60 * 2**30,
              "step_times": [step_s] * 3, "losses": [10.6, 10.5, 10.4]}
    return json.dumps({"format": "moec-fsdp2-bench/1", "setup": {}, "result": result})


def summary(step_s: float, ranks: int) -> str:
    fields = {"steps": 10, "median_step_s": step_s, "tokens_per_s": ranks * TOKENS / step_s,
              "model_tflops": FLOPS / step_s / 1e12, "peak_bytes": 40 * 2**30, "device_used_bytes": 41 * 2**30,
              "cuda_graphs": True}
    if ranks > 1:
        fields.update({"ranks": ranks, "tokens_per_s_per_gpu": TOKENS / step_s})
    return "summary " + json.dumps(fields)


def main() -> None:
    out = Path(sys.argv[1])
    (out / "fsdp2-eager.json").write_text(fsdp("fsdp2-eager", 0.5))
    (out / "fsdp2-compile.json").write_text(fsdp("fsdp2-compile", 0.4))
    (out / "fsdp2-compile-model.json").write_text(fsdp("fsdp2-compile-model", 0.35))
    (out / "one.txt").write_text("step    1  loss 10.5\n" + summary(0.25, 1) + "\n")
    (out / "p2h1.txt").write_text("step    1  loss 10.5\n" + summary(0.3, 2) + "\n")
    (out / "p1h2.txt").write_text("[rank 0] step    1  loss 10.5\n[rank 0] " + summary(0.32, 2) + "\n[rank 1] done\n")
    (out / "unfinished.txt").write_text("step    1  loss 10.5\n")


if __name__ == "__main__":
    main()
