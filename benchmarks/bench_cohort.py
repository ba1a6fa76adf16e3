"""Cohort engine against the inline engine (and a bare loop), side by side in one process.

Two measurements (issue 25), each engine given the very same Flower messages, in turns
(inline, cohort, inline, cohort, ...) so that a shared machine's load falls on both alike:

* ``round-21``: one round of 21 clients, LoRA r16 (alpha 32), FedAvg: the 21 train messages
  (local training, then each client's local accuracy on its test windows), then the 21
  evaluate messages, through ``InlineGrid.send_and_receive`` and
  ``CohortGrid.send_and_receive``. Data: synthetic windows of UCI-HAR's shape (6 channels x
  128 samples, 50 Hz harmonised; 3 synthetic domains x 7 subjects, one client per subject,
  ~92 training windows each) with 2 local epochs at batch 64: 4 steps per client, as one
  epoch of a UCI-HAR subject (~240 training windows) takes. The server's side of a round
  (aggregation, drift analytics, tables) is the same code for both engines and not timed.
* ``eval-1000``: 1,000 clients (8 domains x 125 subjects), LoRA r8 (issue 12's setting), every
  client evaluates the global adapters: the bare sequential loop (one model; per client:
  load the global adapters, ``evaluate_local``; data prepared before timing), the inline
  engine's 1,000 evaluate calls, and the cohort engine's.

Times: wall seconds and this process's CPU seconds (everything runs in this one process, one
torch thread: the ClientApp sets it). The 1-minute load average is recorded before and
after every measurement. Writes ``cohort.csv`` and ``cohort.md`` to ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/bench_cohort.py --out results/bench/cohort
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load() -> float:
    return os.getloadavg()[0]


def messages(cfg, n_clients: int, kind: str, arrays) -> list:
    from flwr.app import ConfigRecord, Message, RecordDict

    from simulations.inline import node_id_of
    from simulations.task import BACKBONE_KEY

    return [Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, BACKBONE_KEY: cfg.backbone})}),
                    dst_node_id=node_id_of(pid), message_type=kind) for pid in range(n_clients)]


def setup(cfg):
    from flwr.app import ArrayRecord

    from simulations.startup import prepare_run
    from simulations.task import build_model, federation

    cfg, n = prepare_run(cfg)
    model = build_model(cfg, federation(cfg).labels.size, Path(cfg.backbone))
    from fedhar.model import trainable_state_dict

    return cfg, n, ArrayRecord(trainable_state_dict(model))


def grids(cfg, n: int, cohort_size: int):
    from simulations.client_app import build_client_app
    from simulations.cohort import CohortGrid
    from simulations.inline import InlineGrid

    app = build_client_app(cfg)
    return {"inline": InlineGrid(app, n, cfg.to_run_config()),
            "cohort": CohortGrid(app, n, cfg.to_run_config(), fixed=cfg, cohort_size=cohort_size)}


def timed(fn):
    l0, w0, c0 = load(), time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0, "load_start": l0, "load_end": load()}


def metric(replies, key):
    return {int(r.content["metrics"]["partition-id"]): float(r.content["metrics"][key]) for r in replies if not r.has_error()}


def round21(args, work: Path) -> list[dict]:
    from simulations.config import FLConfig
    from simulations.inline import task_identity

    cfg = FLConfig(data="synthetic", synthetic_domains=3, synthetic_subjects=7, partition="subject", rank=16,
                   lora_alpha=32, local_epochs=2, batch_size=64, rounds=1, pretrain_epochs=1, out_dir=str(work / "r21"))
    cfg, n, arrays = setup(cfg)
    assert n == 21, n
    engines = grids(cfg, n, args.cohort_size)
    rows, seen = [], {}
    with task_identity(1):
        for rep in range(args.reps + 1):  # rep 0 warms up (model builds, peft import, data): not reported
            for name, grid in engines.items():
                for kind in ("train", "evaluate"):
                    replies, t = timed(lambda g=grid, k=kind: list(g.send_and_receive(messages(cfg, n, k, arrays))))
                    assert len(replies) == n and not any(r.has_error() for r in replies), name
                    key = "train_loss" if kind == "train" else "accuracy"
                    seen.setdefault((kind, key), {})[name] = metric(replies, key)
                    if rep:
                        rows.append({"bench": "round-21", "phase": kind, "engine": name, "rep": rep, "clients": n, **t})
    for (kind, key), by in seen.items():
        diff = max(abs(by["inline"][p] - by["cohort"][p]) for p in by["inline"])
        print(f"round-21 {kind}: max |{key} inline - cohort| over clients = {diff:.2e}", flush=True)
    return rows


def eval1000(args, work: Path) -> list[dict]:
    from simulations.config import FLConfig
    from simulations.inline import task_identity
    from simulations.task import build_model, client_data, evaluate_local, federation, load_partial

    cfg = FLConfig(data="synthetic", synthetic_domains=8, synthetic_subjects=args.eval_clients // 8, partition="subject",
                   rank=8, rounds=1, pretrain_epochs=1, out_dir=str(work / "e1000"))
    cfg, n, arrays = setup(cfg)
    engines = grids(cfg, n, args.cohort_size)
    data = [client_data(cfg, pid) for pid in range(n)]
    model = build_model(cfg, federation(cfg).labels.size, Path(cfg.backbone))
    state = {k: v.numpy() for k, v in arrays.items()}

    def bare():
        import torch

        torch.set_num_threads(1)
        out = {}
        for pid, d in enumerate(data):
            load_partial(model, state)  # as a client loads what it received
            out[pid] = evaluate_local(model, d)["accuracy"]
        return out

    rows, acc = [], {}
    with task_identity(1):
        for grid in engines.values():  # warm-up: one client each
            list(grid.send_and_receive(messages(cfg, n, "evaluate", arrays)[:1]))
        for rep in range(1, args.reps_1000 + 1):
            for name in ("bare", "inline", "cohort"):
                if name == "bare":
                    acc[name], t = timed(bare)
                else:
                    replies, t = timed(lambda g=engines[name]: list(g.send_and_receive(messages(cfg, n, "evaluate", arrays))))
                    acc[name] = metric(replies, "accuracy")
                rows.append({"bench": "eval-1000", "phase": "evaluate", "engine": name, "rep": rep, "clients": n, **t})
                print(f"eval-1000 {name}: {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} CPU s", flush=True)
    diffs = {name: max(abs(acc[name][p] - acc["bare"][p]) for p in acc["bare"]) for name in ("inline", "cohort")}
    print(f"eval-1000: max |accuracy - bare| over clients: {diffs}", flush=True)
    return rows


def write(out: Path, rows: list[dict], command: str) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "cohort.csv", index=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    lines = [f"# Cohort engine benchmark ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit})", "",
             f"`{command}`; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch one thread; "
             f"1-min load average {df['load_start'].min():.1f} to {df['load_end'].max():.1f} (shared machine).", "",
             "| bench | phase | engine | reps | wall s (median) | CPU s (median) | CPU s vs inline | CPU s vs bare |",
             "|---|---|---|---|---|---|---|---|"]
    med = df.groupby(["bench", "phase", "engine"], sort=False)[["wall_s", "cpu_s"]].median()
    for (bench, phase, engine), r in med.iterrows():
        inline = med.loc[(bench, phase, "inline"), "cpu_s"] if (bench, phase, "inline") in med.index else float("nan")
        bare = med.loc[(bench, phase, "bare"), "cpu_s"] if (bench, phase, "bare") in med.index else float("nan")
        reps = int(((df["bench"] == bench) & (df["phase"] == phase) & (df["engine"] == engine)).sum())
        lines.append(f"| {bench} | {phase} | {engine} | {reps} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
                     f"{r['cpu_s'] / inline:.2f}x | {r['cpu_s'] / bare:.2f}x |")
    (out / "cohort.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "cohort")
    p.add_argument("--reps", type=int, default=3, help="round-21: measured repetitions per engine (after a warm-up)")
    p.add_argument("--reps-1000", type=int, default=1, help="eval-1000: repetitions per variant")
    p.add_argument("--eval-clients", type=int, default=1000)
    p.add_argument("--cohort-size", type=int, default=32)
    p.add_argument("--only", nargs="*", choices=("round-21", "eval-1000"), default=["round-21", "eval-1000"])
    p.add_argument("--cache", type=Path, default=None, help="FEDHAR_CACHE_DIR for windows and backbones (default: a temp dir)")
    args = p.parse_args(argv)
    command = "python benchmarks/bench_cohort.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["FEDHAR_CACHE_DIR"] = str(args.cache or work / "cache")
        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        from fedhar.console import quiet_flower

        quiet_flower()
        rows = []
        if "round-21" in args.only:
            rows += round21(args, work)
        if "eval-1000" in args.only:
            rows += eval1000(args, work)
        write(args.out, rows, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
