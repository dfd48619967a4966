#!/usr/bin/env python3
"""Checks `moec plan --json` output against the documented schema moec-plan/1.

Usage: check_plan_json.py PLAN.json [OTHER.json]

Checks every documented key and its type, then the invariants a consumer
relies on: the mesh coordinates of every rank (p = r mod P, h = (r / P) mod H,
q = r / (P·H)), that the groups partition the ranks, that each replica's
shards tile every parameter exactly (once for expert parameters, once per
expert-parallel rank for dense ones), that the per-rank element counts are the
sums of the shards, and that the persistent bytes are 18 (bf16) or 16 (fp32)
per shard element; for a plan that read the partitioned program (`program`
not null), that its memory's master parameters, gradients and optimizer
states are the program's; for a plan that measured the compiled program
(`program_memory` not null), that its total is the sum of its parts and
decides `fits` against its budget. With OTHER, also that both plans describe the same
parameters and placements (the model's source aside) and move the same bytes
per kind of collective and group (the world's scalar all-reduces aside: the
program's losses and statistics, the analytic model's gradient norm), so that
a preset's analytic plan and a model file's plan read from its program agree.
Prints "ok" or fails.
"""

import json
import sys

INT, NUM, BOOL, STR, LIST, OBJ = int, (int, float), bool, str, list, dict

SCHEMA = {
    "schema": STR, "model": OBJ, "job": OBJ, "gpu": OBJ, "mesh": OBJ,
    "parameters": LIST, "ranks": LIST, "memory": OBJ, "collectives": LIST,
    "step": OBJ, "program": (OBJ, type(None)),
    "program_memory": (OBJ, type(None)),
}
PROGRAM_MEMORY = {k: INT for k in ("state", "arena", "inputs", "scratch", "total", "budget")} | {"fits": BOOL}
PROGRAM = {"parameters": INT, "gradients": INT, "optimizer_states": INT,
           "collectives": LIST}
PROGRAM_COLLECTIVE = {"kind": STR, "group": STR, "bytes": INT, "calls": INT}
MODEL = {k: INT for k in (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim",
    "num_local_experts", "num_experts_per_tok", "parameters",
    "expert_parameters", "active_parameters")} | {"source": STR}
JOB = {k: INT for k in (
    "world_size", "expert_parallel_degree", "hybrid_shard_degree", "replicas",
    "gpus_per_node", "nodes", "micro_batch_size", "seq_len",
    "gradient_accumulation", "tokens_per_step")} | {
    "hybrid_shard_degree_automatic": BOOL, "sharding_strategy": STR,
    "activation_checkpointing": STR, "precision": STR,
    "store_param_remainders": BOOL}
GPU = {"name": STR, "memory_bytes": INT, "peak_flops": NUM,
       "memory_bandwidth": NUM, "intra_node_bandwidth": NUM,
       "inter_node_bandwidth": NUM, "compute_efficiency": NUM,
       "communication_efficiency": NUM, "reserved_bytes": INT}
MEMORY = {k: INT for k in (
    "compute_params", "gathered_params", "master_params", "gradients",
    "unsharded_gradients", "optimizer_states", "activations",
    "host_activations",
    "communication_buffers", "workspace", "persistent", "total")}
PARAMETER = {"name": STR, "shape": LIST, "kind": STR, "unit": INT,
             "expert_dim": INT, "shard_dim": INT, "local_shape": LIST}
RANK = {"rank": INT, "node": INT, "q": INT, "h": INT, "p": INT,
        "experts": LIST, "parameter_elements": INT,
        "expert_parameter_elements": INT, "memory": OBJ, "shards": LIST}
COLLECTIVE = {"kind": STR, "group": STR, "group_size": INT,
              "crosses_nodes": BOOL, "what": STR, "bytes": INT,
              "bytes_sent": INT, "count": INT, "overlapped": BOOL,
              "seconds": NUM, "from_program": BOOL}
STEP = {k: NUM for k in (
    "model_flops_per_rank", "hardware_flops_per_rank", "compute_seconds",
    "dispatch_seconds", "sharding_seconds", "exposed_sharding_seconds",
    "optimizer_seconds", "step_seconds", "tokens_per_second",
    "model_tflops_per_gpu")}


def fail(message):
    sys.exit("check_plan_json: " + message)


def check_keys(obj, schema, where):
    if set(obj) != set(schema):
        fail(f"{where}: keys {sorted(obj)} differ from {sorted(schema)}")
    for key, kind in schema.items():
        value = obj[key]
        if kind is INT and (isinstance(value, bool) or not isinstance(value, int)):
            fail(f"{where}.{key}: {value!r} is not an integer")
        if kind is not INT and not isinstance(value, kind):
            fail(f"{where}.{key}: {value!r} is not {kind}")


def product(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def check(plan):
    check_keys(plan, SCHEMA, "plan")
    if plan["schema"] != "moec-plan/1":
        fail(f"schema {plan['schema']!r}")
    check_keys(plan["model"], MODEL, "model")
    check_keys(plan["job"], JOB, "job")
    check_keys(plan["gpu"], GPU, "gpu")
    check_keys(plan["memory"], {"peak_rank": INT, "gpu_bytes": INT,
                                "fits": BOOL, "peak": OBJ}, "memory")
    check_keys(plan["memory"]["peak"], MEMORY, "memory.peak")
    check_keys(plan["step"], STEP, "step")
    job, mesh = plan["job"], plan["mesh"]
    w, P, H, R = (job["world_size"], job["expert_parallel_degree"],
                  job["hybrid_shard_degree"], job["replicas"])
    if mesh["axes"] != ["replica", "shard", "expert"] or mesh["shape"] != [R, H, P]:
        fail(f"mesh {mesh['axes']} {mesh['shape']}")
    if R * H * P != w:
        fail(f"R·H·P = {R * H * P} is not world_size {w}")
    for kind, size in (("expert", P), ("shard", H), ("replica", R),
                       ("dense_replica", R * P)):
        groups = mesh["groups"][kind]
        members = sorted(r for g in groups for r in g["ranks"])
        if members != list(range(w)) or any(len(g["ranks"]) != size for g in groups):
            fail(f"{kind} groups do not partition the ranks into groups of {size}")
        for g in groups:
            nodes = {r // job["gpus_per_node"] for r in g["ranks"]}
            if g["crosses_nodes"] != (len(nodes) > 1):
                fail(f"{kind} group {g['ranks']}: crosses_nodes is wrong")

    params = plan["parameters"]
    for i, p in enumerate(params):
        check_keys(p, PARAMETER, f"parameters[{i}]")
    total = sum(product(p["shape"]) for p in params)
    if total != plan["model"]["parameters"]:
        fail(f"parameters sum to {total}, model says {plan['model']['parameters']}")

    E = plan["model"]["num_local_experts"]
    ranks = plan["ranks"]
    if [r["rank"] for r in ranks] != list(range(w)):
        fail("ranks are not 0..W-1 in order")
    per_elem = 18 if job["precision"] == "bf16" else 16
    for r in ranks:
        check_keys(r, RANK, f"ranks[{r['rank']}]")
        check_keys(r["memory"], MEMORY, f"ranks[{r['rank']}].memory")
        n = r["rank"]
        if (r["p"], r["h"], r["q"]) != (n % P, (n // P) % H, n // (P * H)):
            fail(f"rank {n}: coordinates {(r['q'], r['h'], r['p'])}")
        if r["experts"] != list(range(r["p"] * E // P, (r["p"] + 1) * E // P)):
            fail(f"rank {n}: experts {r['experts']}")
        if len(r["shards"]) != len(params):
            fail(f"rank {n}: {len(r['shards'])} shards for {len(params)} parameters")
        elements = sum(product(s["shape"]) for s in r["shards"])
        experts = sum(product(s["shape"]) for s, p in zip(r["shards"], params)
                      if p["kind"] == "expert")
        if elements != r["parameter_elements"] or experts != r["expert_parameter_elements"]:
            fail(f"rank {n}: shard sums {elements}/{experts} differ from "
                 f"{r['parameter_elements']}/{r['expert_parameter_elements']}")
        if r["memory"]["persistent"] != per_elem * elements:
            fail(f"rank {n}: persistent {r['memory']['persistent']} is not "
                 f"{per_elem} x {elements}")
        mem = r["memory"]
        parts = sum(v for k, v in mem.items() if k not in ("persistent", "total"))
        if parts != mem["total"]:
            fail(f"rank {n}: parts sum to {parts}, total is {mem['total']}")

    # Tiling: per replica q, the shards cover each parameter exactly `copies`
    # times, checked by volume and by pairwise overlap of boxes.
    for i, p in enumerate(params):
        copies = 1 if p["kind"] == "expert" else P
        for q in range(R):
            boxes = [r["shards"][i] for r in ranks if r["q"] == q]
            volume = sum(product(b["shape"]) for b in boxes)
            if volume != copies * product(p["shape"]):
                fail(f"{p['name']}: replica {q} holds {volume} elements")
            for b in boxes:
                for d, (o, s) in enumerate(zip(b["offset"], b["shape"])):
                    if o < 0 or o + s > p["shape"][d]:
                        fail(f"{p['name']}: shard {b} outside {p['shape']}")
            distinct = {(tuple(b["offset"]), tuple(b["shape"])) for b in boxes
                        if product(b["shape"])}
            distinct = sorted(distinct)
            for a in range(len(distinct)):
                for c in range(a + 1, len(distinct)):
                    (oa, sa), (oc, sc) = distinct[a], distinct[c]
                    if all(x < y + t and y < x + s
                           for x, s, y, t in zip(oa, sa, oc, sc)):
                        fail(f"{p['name']}: shards {distinct[a]} and {distinct[c]} overlap")
        # Replicas hold the same shards.
        for r in ranks:
            twin = ranks[r["rank"] % (P * H)]
            if r["shards"][i] != twin["shards"][i]:
                fail(f"{p['name']}: rank {r['rank']} differs from its replica {twin['rank']}")

    for i, c in enumerate(plan["collectives"]):
        check_keys(c, COLLECTIVE, f"collectives[{i}]")
    program = plan["program"]
    if program is not None:
        check_keys(program, PROGRAM, "program")
        for i, c in enumerate(program["collectives"]):
            check_keys(c, PROGRAM_COLLECTIVE, f"program.collectives[{i}]")
        for r in ranks:
            for key, state in (("master_params", "parameters"),
                               ("gradients", "gradients"),
                               ("optimizer_states", "optimizer_states")):
                if r["memory"][key] != program[state]:
                    fail(f"ranks[{r['rank']}].memory.{key} {r['memory'][key]} "
                         f"is not the program's {state} {program[state]}")
    peak = max(ranks, key=lambda r: r["memory"]["total"])
    if peak["memory"]["total"] != plan["memory"]["peak"]["total"]:
        fail("memory.peak is not the largest rank")
    memory = plan["program_memory"]
    if memory is not None:
        # The compiled program's memory plan decides the fit.
        check_keys(memory, PROGRAM_MEMORY, "program_memory")
        if memory["total"] != sum(memory[k] for k in ("state", "arena", "inputs", "scratch")):
            fail("program_memory.total is not the sum of its parts")
        if memory["fits"] != (memory["total"] <= memory["budget"]) or memory["fits"] != plan["memory"]["fits"]:
            fail("program_memory.fits disagrees with the numbers or with memory.fits")
    elif plan["memory"]["fits"] != (plan["memory"]["peak"]["total"] <= plan["gpu"]["memory_bytes"]):
        fail("memory.fits disagrees with the numbers")


def volumes(plan):
    """Bytes per step by (kind, group), the world's all-reduces aside."""
    total = {}
    for c in plan["collectives"]:
        if c["group"] != "world":
            key = f"{c['kind']} {c['group']}"
            total[key] = total.get(key, 0) + c["bytes"] * c["count"]
    return total


def main(argv):
    plans = [json.load(open(path)) for path in argv[1:]]
    for plan in plans:
        check(plan)
    if len(plans) == 2:
        a, b = plans
        for key in ("parameters", "ranks", "mesh"):
            if a[key] != b[key]:
                fail(f"the two plans differ in {key}")
        ta, tb = volumes(a), volumes(b)
        if ta != tb:
            fail(f"the two plans move different bytes: {ta} vs {tb}")
        ma = {k: v for k, v in a["model"].items() if k != "source"}
        mb = {k: v for k, v in b["model"].items() if k != "source"}
        if ma != mb:
            fail(f"the two models differ: {ma} vs {mb}")
    print("ok")


if __name__ == "__main__":
    main(sys.argv)
