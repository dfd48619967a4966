"""Writes small synthetic reports for the tests of python -m moec.bench --report.

    python bench_reports.py DIR

DIR/rounds.json: three rounds of hf-eager, titan-compile and moec whose
step times make the median of the same-round ratios differ from the ratio of
the medians (moec vs hf-eager: rounds 1.300, 1.400, 1.232, median 1.300; the
medians' ratio 1.326); DIR/uneven.json: the same with titan-compile missing
from round 2; DIR/unversioned.json: a report without its format (what
the benchmark wrote before it ran rounds); DIR/policies.json: one round of
hf-eager and two moec programs (moec-full, moec-auto) with their planned
bytes and device memory in use; DIR/power.json: rounds.json with the GPU's
power sampled for titan-compile in every round and for moec in rounds 1
and 2 (hf-eager in none).
"""

import json
import sys
from pathlib import Path

TOKENS_PER_STEP = 8192
FLOPS_PER_STEP = 46.03e12
STEP_S = {  # what: (round 1, round 2, round 3)
    "hf-eager": (0.130, 0.126, 0.117),
    "titan-compile": (0.110, 0.099, 0.1064),
    "moec": (0.100, 0.090, 0.095),
}
PEAK_BYTES = {"hf-eager": (28.0e9, 28.1e9, 27.9e9), "titan-compile": (None, None, None),
              "moec": (28.6e9, 28.6e9, 28.6e9)}


def result(what: str, number: int) -> dict:
    step_s = STEP_S[what][number]
    return {"what": what, "step_s": step_s, "tokens_per_s": TOKENS_PER_STEP / step_s,
            "model_tflops": FLOPS_PER_STEP / step_s / 1e12, "peak_bytes": PEAK_BYTES[what][number],
            "step_seconds": [step_s] * 3, "losses": [11.2, 11.1, 11.0]}


def report(rounds: list[list[dict]]) -> str:
    return json.dumps({"format": "moec-bench/2", "setup": {}, "results": [], "ratios": {}, "rounds": rounds})


def main(out: Path) -> None:
    rounds = [[result(what, number) for what in STEP_S] for number in range(3)]
    (out / "rounds.json").write_text(report(rounds))
    rounds[1] = [r for r in rounds[1] if r["what"] != "titan-compile"]
    (out / "uneven.json").write_text(report(rounds))
    (out / "unversioned.json").write_text(json.dumps({"setup": {}, "results": rounds[0]}))
    full = {**result("moec", 0), "what": "moec-full", "step_s": 0.120, "planned_bytes": 90 * 2**30,
            "device_used_bytes": int(92.5 * 2**30), "peak_bytes": 90 * 2**30}
    auto = {**result("moec", 0), "what": "moec-auto", "step_s": 0.104, "planned_bytes": 120 * 2**30,
            "device_used_bytes": int(123.0 * 2**30), "peak_bytes": 120 * 2**30}
    (out / "policies.json").write_text(report([[result("hf-eager", 0), full, auto]]))
    power = {  # what: per round (W, SM MHz, share at the power cap), None: not sampled
        "titan-compile": ((690, 1560, 0.9), (692, 1545, 1.0), (688, 1575, 0.95)),
        "moec": ((695, 1500, 1.0), (685, 1520, 0.8), None),
    }
    rounds = [[result(what, number) for what in STEP_S] for number in range(3)]
    for number, results in enumerate(rounds):
        for r in results:
            sampled = power.get(r["what"], (None,) * 3)[number]
            if sampled:
                r.update(power_w=sampled[0], power_limit_w=700.0, sm_clock_mhz=sampled[1],
                         power_capped_share=sampled[2])
    (out / "power.json").write_text(report(rounds))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
