"""Federation scaling benchmark: the inline engine from 1 to 1000 clients, the Ray engine,
and the simulation's overhead over a bare training loop.

What it measures (every configuration in a fresh subprocess, one torch thread):

* ``inline-N`` (N = 1, 10, 30, 100, 1000 clients): ``run_inprocess(cfg, engine="inline")``,
  FedAvg, LoRA r8, one local epoch, synthetic data with ``partition="subject"``: one client
  per synthetic subject (about 132 windows each, 70% train), so N clients hold N subjects'
  data. ``fraction_train = min(1, 10/N)``: about 10 clients train per round at every N;
  as fedhar does, every client evaluates the new global adapters every round.
* ``inline-10000`` (``--clients 10000 --only inline-10000``): 10,000 clients (8 synthetic
  domains x 1,250 subjects, ~1.3 million windows, ~3.9 GiB: read from the window cache on
  demand, never all in memory), 10 train per round, every client evaluates every 10th
  round (``client_eval_every=10``); ``--rounds-10000`` rounds (default 10).
* ``cohort-10000``: the same run with the cohort engine (``engine="cohort"``,
  simulations/cohort.py, ``--cohort-size`` clients trained together; evaluation of clients
  that received the same adapters batched), issue 25's all-evaluate-round target.
* ``inline-1000-eval10``: the same 1000 clients, but only 10 of them (a seeded sample per
  round) evaluate: a knob of this benchmark only (``EvalSampleGrid`` below drops the other
  evaluate messages), since FLConfig has none.
* ``ray-10``: ``run_inprocess(cfg, engine="ray")`` at 10 clients (Flower's simulation
  engine, one CPU per client: two actors here); with ``--cpus-per-client 2`` the row
  ``ray-10-cpus2``: one actor on 2 CPUs (``fedhar fl --cpus-per-client``).
* ``bare-10`` (and ``bare-1000``): the same local training and evaluation as ``inline-10``
  (same model, backbone, data, epochs, client sampling, FedAvg weighting; since issue 12
  also each trained client's evaluation of its local model, as a client does for its
  ``local_accuracy``) in a plain loop: one model, data prepared once, no Flower, no
  messages, no tables. ``inline-10`` and ``bare-10`` run ``--reps`` times, interleaved, for
  the overhead check (issue 12 targets: inline at most 1.10x bare per round at 10 clients,
  1.25x at 1000).

Per configuration: wall seconds of every round (from the start of the round loop /
the end of the previous round's checkpoint to the end of this round's checkpoint:
training, aggregation, evaluation, tables, checkpoint); for inline runs also where the
time goes (ClientApp calls by message type, and inside them fedhar's ``train_local``,
``evaluate_local``, ``build_model``, ``client_data``; the checkpoint; the rest is the
server: strategy, aggregation, logging, the engine's message copies). Memory: peak RSS of
the process tree sampled every 50 ms by this (parent) process, the driver's exact peak
(VmHWM), the driver's RSS before the rounds and after each round, the data's bytes, and
the inline engine's own bookkeeping per node (tracemalloc of building the grid; bytes of
the nodes' context.state after the run).

Run from the repository root (results go to results/bench/fl_scaling.{csv,md}; finished
rows are kept and skipped, so an interrupted run continues where it stopped):

    python benchmarks/bench_fl_scaling.py            # about 10-15 min on 2 cores
    python benchmarks/bench_fl_scaling.py --quick    # 1, 10 clients, 2 rounds, writes to a temp dir
    python benchmarks/bench_fl_scaling.py --fresh    # forget finished rows
    python benchmarks/bench_fl_scaling.py --only inline-10 bare-10
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e`
    sys.path.insert(0, str(ROOT))

# clients -> (synthetic domains, subjects per domain)
SHAPES = {1: (1, 1), 10: (2, 5), 30: (3, 10), 100: (4, 25), 1000: (8, 125), 10000: (8, 1250)}
TRAIN_PER_ROUND = 10
CLIENT_EVAL_EVERY = {10000: 10}  # issue 12: 10,000 clients, 10 train per round, all evaluate every 10th round
OVERHEAD_TARGETS = {10: 1.10, 1000: 1.25}  # inline round time at most this times the bare loop's (issue 12)
CSV_COLUMNS = [
    "name", "rep", "engine", "clients", "rounds", "trained_per_round", "evaluated_per_round",
    "round1_s", "steady_round_s", "steady_min_s", "steady_max_s", "rounds_s", "round1_cpu_s", "steady_round_cpu_s",
    "rounds_cpu_s",
    "train_calls_s", "evaluate_calls_s", "train_local_s", "evaluate_local_s", "build_model_s", "client_data_s",
    "clientapp_other_s", "checkpoint_s", "server_rest_s", "evaluate_calls_rounds_s",
    "peak_rss_tree_mib", "peak_pss_tree_mib", "max_processes", "driver_peak_rss_mib", "rss_before_rounds_mib", "rss_after_round1_mib",
    "rss_end_mib", "data_mib", "grid_bytes_per_node", "state_bytes", "last_accuracy", "setup_s", "total_s",
    "load_start", "load_end", "date", "commit", "command",
]


# -- the configurations ---------------------------------------------------------------------


def plan(args) -> list[dict]:
    clients = [int(c) for c in args.clients.split(",")]
    rows = []
    for rep in range(1, args.reps + 1):  # the overhead pair first, interleaved
        rows += [dict(name="inline-10", kind="inline", clients=10, rounds=args.rounds, rep=rep),
                 dict(name="bare-10", kind="bare", clients=10, rounds=args.rounds, rep=rep)]
    for n in clients:
        if n != 10:
            rounds = args.rounds if n < 1000 else args.rounds_1000 if n < 10000 else args.rounds_10000
            rows.append(dict(name=f"inline-{n}", kind="inline", clients=n, rounds=rounds, rep=1))
            if n == 10000:
                rows.append(dict(name=f"cohort-{n}", kind="cohort", clients=n, rounds=rounds, rep=1,
                                 cohort_size=args.cohort_size))
    cpus = args.cpus_per_client  # fewer actors: ray-10-cpus2 is one actor on 2 CPUs
    rows.append(dict(name="ray-10" + (f"-cpus{cpus:g}" if cpus != 1 else ""), kind="ray", clients=10,
                     rounds=args.rounds, rep=1, cpus_per_client=cpus))
    if 1000 in clients:  # the same work as inline-1000 without Flower
        rows.append(dict(name="bare-1000", kind="bare", clients=1000, rounds=args.rounds_1000, rep=1))
    if 1000 in clients:
        rows.append(dict(name="inline-1000-eval10", kind="inline", clients=1000, rounds=args.rounds_1000, rep=1,
                         eval_sample=TRAIN_PER_ROUND))
    if args.only:
        rows = [r for r in rows if r["name"] in args.only]
    return rows


def fl_config(clients: int, rounds: int, out_dir: str, backbone: str = ""):
    from dataclasses import fields

    from simulations.config import FLConfig

    domains, subjects = SHAPES.get(clients, (1, clients))
    values = dict(data="synthetic", partition="subject", synthetic_domains=domains, synthetic_subjects=subjects,
                  pretrain_epochs=1, backbone=backbone, mode="lora", rank=8, local_epochs=1, batch_size=64,
                  strategy="fedavg", rounds=rounds, fraction_train=min(1.0, TRAIN_PER_ROUND / clients), seed=0,
                  client_eval_every=CLIENT_EVAL_EVERY.get(clients, 1), out_dir=out_dir,
                  head="shared")  # shared head: plain FedAvg of adapters + head, as bare does
    known = {f.name for f in fields(FLConfig)}
    return FLConfig(**{k: v for k, v in values.items() if k in known})


# -- the child: one configuration in this process ------------------------------------------


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def cpu_seconds(tree: bool = False) -> float:
    """CPU seconds (user + system) of this process, and with ``tree`` of its descendants too
    (Ray's raylet, GCS and actors)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    if tree:
        for p in me.children(recursive=True):
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
    return total


def vmhwm() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if spec["kind"] == "prepare":
        return prepare(spec)
    if spec["kind"] == "bare":
        return bare_loop(spec, t_start)
    return federated(spec, t_start)


def prepare(spec: dict) -> dict:
    """Pretrain the shared backbone (small synthetic population) and cache every N's windows."""
    from simulations.task import ensure_backbone, federation

    out = {"backbone": str(ensure_backbone(fl_config(10, 1, "")).resolve()), "clients": {}}
    for n in spec["all_clients"]:
        t0 = time.perf_counter()
        fed = federation(fl_config(n, 1, "", out["backbone"]))
        out["clients"][n] = {"got": len(fed.parts), "data_bytes": int(fed.windows.x.nbytes),
                             "windows": len(fed.windows), "seconds": time.perf_counter() - t0}
    return out


def federated(spec: dict, t_start: float) -> dict:
    """run_inprocess with the inline or the Ray engine; per-round clocks from hooks."""
    from collections import defaultdict

    from flwr.app import ArrayRecord, MessageType

    import simulations.client_app as client_app
    import simulations.inline as inline
    import simulations.rounds as rounds
    import simulations.server_app as server_app
    from simulations.run import run_inprocess

    spent = defaultdict(float)  # seconds in wrapped functions (inline: the ClientApp's; all: checkpoint)

    def timed(module, name, key):
        inner = getattr(module, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0

        setattr(module, name, wrapper)

    for name in ("train_local", "evaluate_local", "client_data"):
        timed(client_app, name, name)
    # the model: built per call, or (issue 12) built once per process and reset per call
    timed(client_app, "client_model" if hasattr(client_app, "client_model") else "build_model", "build_model")
    marks = []  # (time, rss, spent copy, grid stats copy) at the start and after every round
    grids = []

    original_grid = inline.InlineGrid
    if spec["kind"] == "cohort":  # register the cohort engine's grid too (its stats: time per message type)
        import simulations.cohort as cohort

        cohort_init = cohort.CohortGrid.__init__

        def register(self, *a, **k):
            cohort_init(self, *a, **k)
            grids.append(self)

        cohort.CohortGrid.__init__ = register

    class EvalSampleGrid(original_grid):
        """Registers itself; with eval_sample, only a seeded sample of k nodes evaluates."""

        eval_sample = spec.get("eval_sample")

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            grids.append(self)

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            k = self.eval_sample
            evaluate = [m for m in messages if m.metadata.message_type == MessageType.EVALUATE]
            if k and len(evaluate) > k:
                import numpy as np

                rng = np.random.default_rng([0, int(evaluate[0].metadata.group_id or 0)])
                keep = {evaluate[i].metadata.dst_node_id for i in rng.choice(len(evaluate), k, replace=False)}
                messages = [m for m in messages if m.metadata.message_type != MessageType.EVALUATE
                            or m.metadata.dst_node_id in keep]
            return super().send_and_receive(messages, timeout=timeout)

    inline.InlineGrid = EvalSampleGrid

    def mark():
        stats = {k: dict(v) for k, v in grids[0].stats.items()} if grids else {}
        marks.append((time.perf_counter(), rss(), dict(spent), stats, cpu_seconds(tree=spec["kind"] == "ray")))

    inner_run_rounds, inner_checkpoint = server_app.run_rounds, rounds.save_checkpoint

    def run_rounds(*a, **k):
        mark()
        return inner_run_rounds(*a, **k)

    def save_checkpoint(*a, **k):
        t0 = time.perf_counter()
        inner_checkpoint(*a, **k)
        spent["checkpoint"] += time.perf_counter() - t0
        mark()

    server_app.run_rounds, rounds.save_checkpoint = run_rounds, save_checkpoint
    cfg = fl_config(spec["clients"], spec["rounds"], spec["out_dir"], spec["backbone"])
    extra = ({"cohort_size": spec["cohort_size"]} if spec["kind"] == "cohort" else
             {"cpus_per_client": spec["cpus_per_client"]} if spec["kind"] == "ray" else {})
    run_inprocess(cfg, engine=spec["kind"], **extra)  # (no federation() here: a second cache entry would double the data)
    import pandas as pd

    table = pd.read_csv(Path(spec["out_dir"]) / "rounds.csv")
    out = {"rounds_s": [b[0] - a[0] for a, b in zip(marks, marks[1:])],
           "rounds_cpu_s": [b[4] - a[4] for a, b in zip(marks, marks[1:])],
           "setup_s": marks[0][0] - t_start, "rss_before_rounds": marks[0][1],
           "rss_after_round": [m[1] for m in marks[1:]], "data_bytes": spec["data_bytes"],
           "last_accuracy": float(table["accuracy"].iloc[-1]),
           "trained_per_round": float(table["clients_trained"].median())}
    if spec["kind"] in ("inline", "cohort"):
        per_round = []
        for (_, _, s0, g0, _), (_, _, s1, g1, _) in zip(marks, marks[1:]):
            d = {k: s1.get(k, 0.0) - s0.get(k, 0.0) for k in set(s1) | set(s0)}
            for kind in (MessageType.TRAIN, MessageType.EVALUATE):
                d[f"{kind}_calls"] = g1.get(kind, {}).get("seconds", 0.0) - g0.get(kind, {}).get("seconds", 0.0)
                d[f"{kind}_n"] = g1.get(kind, {}).get("calls", 0) - g0.get(kind, {}).get("calls", 0)
            per_round.append(d)
        out["per_round"] = per_round
    if spec["kind"] == "inline":
        grid = grids[0]
        out["state_bytes"] = sum(len(a.data) for c in grid.contexts.values() for rec in c.state.values()
                                 if isinstance(rec, ArrayRecord) for a in rec.values())
        import tracemalloc

        from flwr.clientapp import ClientApp

        tracemalloc.start()
        probe = original_grid(ClientApp(), spec["clients"], cfg.to_run_config())
        out["grid_bytes_per_node"] = tracemalloc.get_traced_memory()[0] / spec["clients"]
        tracemalloc.stop()
        del probe
    return out


def bare_loop(spec: dict, t_start: float) -> dict:
    """The inline run's training and evaluation without Flower: one model, data prepared once."""
    import numpy as np

    from simulations.rounds import sample_partitions
    from simulations.task import (
        build_model,
        client_data,
        evaluate_local,
        federation,
        get_trainable,
        set_trainable,
        train_local,
    )

    cfg = fl_config(spec["clients"], spec["rounds"], spec["out_dir"], spec["backbone"])
    fed = federation(cfg)
    n = len(fed.parts)
    data = [client_data(cfg, p) for p in range(n)]
    model = build_model(cfg, fed.labels.size, Path(cfg.backbone))
    state = get_trainable(model)
    n_train = max(1, int(round(cfg.fraction_train * n)))
    rss_before, t_rounds = rss(), time.perf_counter()
    rounds_s, rounds_cpu_s, per_round, rss_after, accuracy = [], [], [], [], float("nan")
    for server_round in range(1, cfg.rounds + 1):
        t0, c0 = time.perf_counter(), cpu_seconds()
        updates, weights = [], []
        for pid in sample_partitions(list(range(n)), n_train, cfg.seed, server_round):
            set_trainable(model, state)
            metrics = train_local(model, data[pid], cfg, seed=cfg.seed * 10007 + server_round * 101 + pid)
            evaluate_local(model, data[pid])  # as a federated client does (its local_accuracy)
            updates.append(get_trainable(model))
            weights.append(metrics["num-examples"])
        t1 = time.perf_counter()
        w = np.asarray(weights, dtype=np.float64) / sum(weights)
        state = {k: sum(wi * u[k] for wi, u in zip(w, updates)).astype(state[k].dtype) for k in state}
        set_trainable(model, state)
        t2 = time.perf_counter()
        results = [evaluate_local(model, d) for d in data]
        examples = np.asarray([r["num-examples"] for r in results], dtype=np.float64)
        accuracy = float(np.dot([r["accuracy"] for r in results], examples) / examples.sum())
        t3 = time.perf_counter()
        rounds_s.append(t3 - t0)
        rounds_cpu_s.append(cpu_seconds() - c0)
        per_round.append({"train": t1 - t0, "aggregate": t2 - t1, "evaluate": t3 - t2})
        rss_after.append(rss())
    return {"rounds_s": rounds_s, "rounds_cpu_s": rounds_cpu_s, "per_round": per_round, "setup_s": t_rounds - t_start,
            "rss_before_rounds": rss_before, "rss_after_round": rss_after,
            "data_bytes": int(fed.windows.x.nbytes), "last_accuracy": accuracy, "trained_per_round": n_train}


# -- the parent: subprocesses, memory sampling, the tables -----------------------------------


def run_child(spec: dict, work: Path) -> tuple[dict, dict]:
    """Run ``spec`` in a fresh interpreter; sample its process tree's RSS every 50 ms."""
    import psutil

    result_path = work / f"{spec['name']}-{spec.get('rep', 0)}.json"
    log_path = work / f"{spec['name']}-{spec.get('rep', 0)}.log"
    spec = {**spec, "result": str(result_path)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        root, peak, peak_pss, most, tick = psutil.Process(proc.pid), 0, 0, 0, 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total, pss = 0, 0
            for p in tree:
                try:
                    total += p.memory_info().rss
                    if tick % 20 == 0:  # PSS (shared pages split between the processes sharing them): ~1/s, it is slow
                        pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak, peak_pss, most, tick = max(peak, total), max(peak_pss, pss), max(most, len(tree)), tick + 1
            time.sleep(0.05)
        proc.wait()
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{spec['name']} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    out = json.loads(result_path.read_text())
    return out, {"peak_rss_tree": peak, "peak_pss_tree": peak_pss, "max_processes": most, "total_s": time.perf_counter() - t0,
                 "load_start": load_start, "load_end": os.getloadavg()[0]}


MIB = 2 ** 20


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def csv_row(spec: dict, out: dict, outer: dict, commit: str, command: str) -> dict:
    rounds_s = out["rounds_s"]
    steady = rounds_s[1:] or rounds_s
    steady_idx = range(1, len(rounds_s)) if len(rounds_s) > 1 else range(len(rounds_s))
    per_round = out.get("per_round")

    def steady_median(key):
        if not per_round:
            return ""
        return round(median([per_round[i].get(key, 0.0) for i in steady_idx]), 4)

    row = {
        "name": spec["name"], "rep": spec["rep"], "engine": spec["kind"], "clients": spec["clients"],
        "rounds": len(rounds_s), "trained_per_round": out["trained_per_round"],
        "evaluated_per_round": spec.get("eval_sample") or (
            f"{spec['clients']} every {CLIENT_EVAL_EVERY[spec['clients']]}th round"
            if spec["clients"] in CLIENT_EVAL_EVERY else spec["clients"]),
        "round1_s": round(rounds_s[0], 4), "steady_round_s": round(median(steady), 4),
        "steady_min_s": round(min(steady), 4), "steady_max_s": round(max(steady), 4),
        "rounds_s": ";".join(f"{s:.3f}" for s in rounds_s),
        "round1_cpu_s": round(out["rounds_cpu_s"][0], 4),
        "steady_round_cpu_s": round(median(out["rounds_cpu_s"][1:] or out["rounds_cpu_s"]), 4),
        "rounds_cpu_s": ";".join(f"{s:.3f}" for s in out["rounds_cpu_s"]),
        "peak_rss_tree_mib": round(outer["peak_rss_tree"] / MIB, 1),
        "peak_pss_tree_mib": round(outer["peak_pss_tree"] / MIB, 1), "max_processes": outer["max_processes"],
        "driver_peak_rss_mib": round(out["driver_peak_rss"] / MIB, 1),
        "rss_before_rounds_mib": round(out["rss_before_rounds"] / MIB, 1),
        "rss_after_round1_mib": round(out["rss_after_round"][0] / MIB, 1),
        "rss_end_mib": round(out["rss_after_round"][-1] / MIB, 1), "data_mib": round(out["data_bytes"] / MIB, 1),
        "grid_bytes_per_node": round(out["grid_bytes_per_node"]) if "grid_bytes_per_node" in out else "",
        "state_bytes": out.get("state_bytes", ""), "last_accuracy": round(out["last_accuracy"], 4),
        "setup_s": round(out["setup_s"], 2), "total_s": round(outer["total_s"], 2),
        "load_start": round(outer["load_start"], 2), "load_end": round(outer["load_end"], 2),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": commit,
        "command": command,
    }
    if spec["kind"] in ("inline", "cohort"):  # (cohort: a message's time is its cohort's time shared out)
        row.update({
            "evaluate_calls_rounds_s": ";".join(f"{d['evaluate_calls']:.3f}" for d in per_round),
            "train_calls_s": steady_median("train_calls"), "evaluate_calls_s": steady_median("evaluate_calls"),
            "train_local_s": steady_median("train_local"), "evaluate_local_s": steady_median("evaluate_local"),
            "build_model_s": steady_median("build_model"), "client_data_s": steady_median("client_data"),
            "checkpoint_s": steady_median("checkpoint"),
        })
        other = [per_round[i]["train_calls"] + per_round[i]["evaluate_calls"] - sum(
            per_round[i].get(k, 0.0) for k in ("train_local", "evaluate_local", "build_model", "client_data"))
            for i in steady_idx]
        rest = [rounds_s[i] - per_round[i]["train_calls"] - per_round[i]["evaluate_calls"]
                - per_round[i].get("checkpoint", 0.0) for i in steady_idx]
        row.update({"clientapp_other_s": round(median(other), 4), "server_rest_s": round(median(rest), 4)})
    elif spec["kind"] == "bare":
        row.update({"train_local_s": steady_median("train"), "evaluate_local_s": steady_median("evaluate"),
                    "server_rest_s": steady_median("aggregate")})
    return {k: row.get(k, "") for k in CSV_COLUMNS}


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fnum(v, digits=2):
    if v in ("", None) or v != v:  # empty or NaN
        return ""
    v = float(v)
    return f"{v:,.{digits}f}"


def write_markdown(path: Path, rows: list[dict], command: str, prepared: dict | None) -> None:
    import torch

    try:
        import flwr
        import ray

        versions = f"flwr {flwr.__version__}, ray {ray.__version__}"
    except ImportError:
        versions = ""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)

    def pooled(name, key):
        return median([float(r[key]) for r in by_name.get(name, []) if r.get(key) not in ("", None)])

    def pooled_steady(name, key="rounds_s"):  # every later round of every rep
        xs = []
        for r in by_name.get(name, []):
            xs += [float(s) for s in r[key].split(";")][1:]
        return xs

    lines = [
        "# Federation scaling benchmark",
        "",
        "Written by `benchmarks/bench_fl_scaling.py` (see its docstring and results/bench/README.md).",
        "",
        "| | |", "|---|---|",
        *[f"| command | `{c}`: {', '.join(dict.fromkeys(r['name'] for r in rows if r['command'] == c))} |"
          for c in dict.fromkeys(r["command"] for r in rows)],
        f"| git commit | {', '.join(sorted({r['commit'] for r in rows}))} |",
        f"| dates | {min(r['date'] for r in rows)} .. {max(r['date'] for r in rows)} |",
        f"| machine | {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, torch {torch.__version__}, {versions} |",
        "| torch threads | 1 per process (OMP_NUM_THREADS=1); Ray: 2 actors of 1 CPU (ray-10-cpus2: 1 actor of 2 CPUs) |",
        f"| load average (1 min) at start .. end of the rows | {min(float(r['load_start']) for r in rows):.2f} .. "
        f"{max(float(r['load_end']) for r in rows):.2f} |",
        "| workload | FedAvg, LoRA r8 (alpha 16), shared head, 1 local epoch, batch 64, synthetic data, "
        "one client per synthetic subject (~132 windows, 70% train in time order) |",
        "",
        "## Time per round and memory",
        "",
        "Seconds per round: round 1 (includes first-call costs), and the median (min..max) of the "
        "later rounds, pooled over repetitions; CPU s: CPU seconds of the process per later round "
        "(Ray: of the whole tree), less sensitive than wall time to other processes on the machine. "
        "Peak RSS: whole process tree (Ray: driver, raylet, GCS, workers; shared pages counted in "
        "every process), sampled every 50 ms; peak PSS: the same tree with each shared page split between the "
        "processes sharing it (what the tree adds to the machine's memory), sampled about once a second; "
        "driver: exact peak (VmHWM). Data: the federation's windows (float32; at 10,000 clients in the "
        "cache file, read per client). Setup: process start to the first round (imports, data, "
        "backbone, Ray start, finding the clients). Load average: the machine's 1-minute load at the "
        "start and end of each row (2 cores; other users' jobs).",
        "",
        "| configuration | clients | train / evaluate per round | round 1 s | s / round | CPU s / round | "
        "train calls s | evaluate calls s | peak RSS tree MiB | peak PSS tree MiB | driver peak MiB | RSS before rounds -> "
        "after last MiB | data MiB | processes | setup s | last accuracy | reps | load average |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    order = sorted(by_name, key=lambda n: (by_name[n][0]["engine"] != "inline", int(by_name[n][0]["clients"]), n))
    for name in order:
        rs = by_name[name]
        steady = pooled_steady(name) or [float(r["steady_round_s"]) for r in rs]
        first = rs[0]
        lines.append(
            f"| {name} | {first['clients']} | {fnum(pooled(name, 'trained_per_round'), 0)} / "
            f"{first['evaluated_per_round']} | {fnum(pooled(name, 'round1_s'))} | "
            f"{median(steady):.2f} ({min(steady):.2f}..{max(steady):.2f}) | "
            f"{median(pooled_steady(name, 'rounds_cpu_s')):.2f} | "
            f"{fnum(pooled(name, 'train_calls_s'))} | {fnum(pooled(name, 'evaluate_calls_s'))} | "
            f"{fnum(pooled(name, 'peak_rss_tree_mib'), 0)} | {fnum(pooled(name, 'peak_pss_tree_mib'), 0)} | "
            f"{fnum(pooled(name, 'driver_peak_rss_mib'), 0)} | "
            f"{fnum(pooled(name, 'rss_before_rounds_mib'), 0)} -> {fnum(pooled(name, 'rss_end_mib'), 0)} | "
            f"{fnum(pooled(name, 'data_mib'), 1)} | {fnum(pooled(name, 'max_processes'), 0)} | "
            f"{fnum(pooled(name, 'setup_s'), 1)} | "
            f"{fnum(pooled(name, 'last_accuracy'), 3)} | {len(rs)} | "
            f"{min(float(r['load_start']) for r in rs):.1f}..{max(float(r['load_end']) for r in rs):.1f} |")
    inline_rows = [n for n in order if by_name[n][0]["engine"] in ("inline", "cohort")]
    lines += [
        "",
        "## Where an inline round's time goes",
        "",
        "Median seconds per later round. ClientApp calls = the engine's clock around each "
        "ClientApp call; inside them fedhar's functions (`train_local`, `evaluate_local`, "
        "`build_model`: the client's model (since issue 12 built once per process, reset per call), "
        "`client_data`: the client's normalised windows "
        "per call) and the rest of the ClientApp (`load_partial`, ArrayRecord conversions, "
        "Flower's dispatch). Server = round - ClientApp calls - checkpoint: strategy, FedAvg "
        "aggregation, clients.csv, the engine's copies of messages and contexts. bare-10: its "
        "training, evaluation and aggregation in the same columns.",
        "",
        "| configuration | s / round | train_local | evaluate_local | build_model | client_data | "
        "rest of ClientApp | checkpoint | server | engine bytes per node | context.state bytes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in inline_rows + [n for n in order if by_name[n][0]["engine"] == "bare"]:
        steady = pooled_steady(name)
        lines.append(
            f"| {name} | {median(steady):.3f} | {fnum(pooled(name, 'train_local_s'), 3)} | "
            f"{fnum(pooled(name, 'evaluate_local_s'), 3)} | {fnum(pooled(name, 'build_model_s'), 3)} | "
            f"{fnum(pooled(name, 'client_data_s'), 3)} | {fnum(pooled(name, 'clientapp_other_s'), 3)} | "
            f"{fnum(pooled(name, 'checkpoint_s'), 3)} | {fnum(pooled(name, 'server_rest_s'), 3)} | "
            f"{fnum(pooled(name, 'grid_bytes_per_node'), 0)} | {fnum(pooled(name, 'state_bytes'), 0)} |")
    pairs = [(n, f"inline-{n}{sfx}", f"bare-{n}{sfx}") for n in OVERHEAD_TARGETS for sfx in ("", "-run1")
             if f"inline-{n}{sfx}" in by_name and f"bare-{n}{sfx}" in by_name]
    if pairs:
        lines += ["", "## Overhead of the simulation over a bare loop", ""]
    for n, sim, bare in pairs:
        target = OVERHEAD_TARGETS[n]
        load = [float(r[k]) for r in by_name[sim] + by_name[bare] for k in ("load_start", "load_end")]
        lines.append(f"{sim} against {bare} (load average {min(load):.1f}..{max(load):.1f}):")
        for key, what in (("rounds_s", "wall"), ("rounds_cpu_s", "CPU")):
            a, b = pooled_steady(sim, key), pooled_steady(bare, key)
            ratio = median(a) / median(b)
            per_rep = []
            for ri in by_name[sim]:
                match = [rb for rb in by_name[bare] if rb["rep"] == ri["rep"]]
                if match:
                    per_rep.append(median([float(x) for x in ri[key].split(";")][1:])
                                   / median([float(x) for x in match[0][key].split(";")][1:]))
            verdict = "**MET**" if ratio <= target else "**MISSED**"
            lines.append(
                f"- {what} time: {median(a):.3f} s / round against {median(b):.3f} s / round "
                f"(medians over {len(a)} and {len(b)} later rounds): **{ratio:.2f}x** (per repetition: "
                f"{', '.join(f'{x:.2f}' for x in per_rep)}). Target at most {target:.2f}x: {verdict}.")
        lines.append("")
    if prepared:
        lines += ["", "## Data", "", "| clients | windows | MiB | s to prepare or load (last invocation) |",
                  "|---:|---:|---:|---:|"]
        for n, d in sorted(prepared["clients"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {n} | {d['windows']:,} | {d['data_bytes'] / MIB:.1f} | {d['seconds']:.1f} |")
    lines += ["", "## Raw rows", "", "See `fl_scaling.csv` (one row per configuration and repetition; "
              "`rounds_s` lists every round's seconds).", ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"), help="folder for fl_scaling.{csv,md}")
    ap.add_argument("--clients", default="1,10,30,100,1000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rounds-1000", type=int, default=2)
    ap.add_argument("--rounds-10000", type=int, default=10, help="rounds of inline-10000 (clients evaluate in the 10th)")
    ap.add_argument("--cohort-size", type=int, default=32, help="clients trained together in cohort-10000")
    ap.add_argument("--cpus-per-client", type=float, default=1.0,
                    help="the ray row's Ray CPUs per client (2 on 2 cores: one actor; row ray-10-cpus2)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of inline-10 and bare-10")
    ap.add_argument("--only", nargs="*", help="only these configuration names")
    ap.add_argument("--fresh", action="store_true", help="forget the finished rows in the csv")
    ap.add_argument("--quick", action="store_true", help="1 and 10 clients, 2 rounds, 1 rep, to a temp dir")
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        out = child(spec)
        out["driver_peak_rss"] = vmhwm()
        Path(spec["result"]).write_text(json.dumps(out))
        return 0
    if args.quick:
        args.clients, args.rounds, args.rounds_1000, args.reps = "1,10", 2, 2, 1
        args.out = tempfile.mkdtemp(prefix="fl-scaling-quick-")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "fl_scaling.csv", out_dir / "fl_scaling.md"
    if args.fresh and csv_path.exists():
        csv_path.unlink()
    command = "python benchmarks/bench_fl_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="fl-scaling-"))
    commit = git_commit()
    rows = plan(args)
    all_clients = sorted({r["clients"] for r in rows} | {10})
    t0 = time.perf_counter()
    prepared, _ = run_child({"name": "prepare", "kind": "prepare", "all_clients": all_clients}, work)
    print(f"prepared backbone and data in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{n} clients {d['windows']} windows" for n, d in prepared["clients"].items()), flush=True)
    for n, d in prepared["clients"].items():
        if d["got"] != int(n):
            raise RuntimeError(f"asked for {n} clients, the partition gave {d['got']}")
    done = {(r["name"], r["rep"]) for r in read_rows(csv_path)}
    for spec in rows:
        if (spec["name"], str(spec["rep"])) in done:
            print(f"{spec['name']} rep {spec['rep']}: done, skipped", flush=True)
            continue
        spec = {**spec, "backbone": prepared["backbone"], "out_dir": str(work / f"run-{spec['name']}-{spec['rep']}"),
                "data_bytes": prepared["clients"][str(spec["clients"])]["data_bytes"]}
        out, outer = run_child(spec, work)
        row = csv_row(spec, out, outer, commit, command)
        append_row(csv_path, row)
        print(f"{spec['name']} rep {spec['rep']}: round 1 {row['round1_s']} s, then {row['steady_round_s']} s "
              f"per round; peak RSS {row['peak_rss_tree_mib']} MiB ({outer['total_s']:.0f} s)", flush=True)
        write_markdown(md_path, read_rows(csv_path), command, prepared)
    write_markdown(md_path, read_rows(csv_path), command, prepared)
    print(f"finished in {time.perf_counter() - t0:.0f} s: {csv_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
