"""The local-only arm: every client trains alone and is never aggregated (the lower bound).

Each client runs exactly what its ClientApp runs in a federation with the same FLConfig: the
same seeded initial model, ``rounds`` x ``local_epochs`` passes over its own training windows,
a fresh AdamW each round and the same per-round shuffling seed. Only the server's
aggregation is missing. Each client's final model is scored on the server's test windows
(the very windows the federated and centralised arms are scored on) and on its own test
split. Flower is not involved: nothing travels.

Writes to the out-dir: ``config.json`` and ``local.csv`` (one row per client and evaluation
set, appended as each client finishes, so an interrupted run resumes with the next client).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from fedhar.lodo import code_version
from simulations.config import FLConfig
from simulations.server_eval import ServerEvaluator
from simulations.task import build_model, client_data, ensure_backbone, evaluate_local, federation, get_trainable, train_local


def train_seed(cfg: FLConfig, server_round: int, pid: int) -> int:
    """The shuffling seed of client ``pid`` in a round: the ClientApp's formula."""
    return cfg.seed * 10007 + server_round * 101 + pid


def run_local_only(cfg: FLConfig, out_dir: Path, log=None) -> pd.DataFrame:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone = ensure_backbone(cfg)
    fed = federation(cfg)
    evaluator = ServerEvaluator(cfg, fed, backbone)
    csv_path = out_dir / "local.csv"
    done = set(pd.read_csv(csv_path)["client"]) if csv_path.exists() else set()
    (out_dir / "config.json").write_text(json.dumps(
        {"config": json.loads(cfg.to_json()), "code": code_version(), "threads": torch.get_num_threads(),
         "clients": fed.client_names, "head": fed.head,
         "server_evaluation": evaluator.describe()}, indent=1))
    local_head = fed.head == "local"
    for pid, name in enumerate(fed.client_names):
        if name in done:
            continue
        t0 = time.perf_counter()
        data = client_data(cfg, pid)
        model = build_model(cfg, fed.labels.size, backbone, pid, head_classes=data.n_classes if local_head else None)
        steps = 0  # DP-SGD steps over all rounds (--dp-sgd-noise): the record-level epsilon below
        for server_round in range(1, cfg.rounds + 1):
            stats = train_local(model, data, cfg, seed=train_seed(cfg, server_round, pid))
            steps += stats.pop("dp-sgd-steps", 0)
        own = evaluate_local(model, data)
        state = get_trainable(model)
        if local_head:  # the server's probe replaces a local head; the global arrays carry none
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        rows = [{"client": name, "phase": "local", "set": "own test", "accuracy": own["accuracy"],
                 "macro_f1": own["macro_f1"], "num_examples": own["num-examples"], "train_loss": stats["train_loss"],
                 "train_windows": len(data.train_y)}]
        for r in evaluator.run(cfg.rounds, state):
            rows.append({"client": name, "phase": r["phase"], "set": r["client"], "accuracy": r["accuracy"],
                         "macro_f1": r["macro_f1"], "num_examples": r["num_examples"],
                         "train_loss": stats["train_loss"], "train_windows": len(data.train_y)})
        if steps:
            from fedhar.model.dp_sgd import sampling_rate
            from fedhar.privacy import epsilon_spent

            spent = epsilon_spent(cfg.dp_sgd_noise, sampling_rate(len(data.train_y), cfg.batch_size), steps, cfg.dp_delta)
            rows = [{**row, "dp_sgd_epsilon": spent} for row in rows]
        pd.DataFrame(rows).to_csv(csv_path, mode="a", header=not csv_path.exists(), index=False)
        server = [r for r in rows if r["phase"] == "server"]
        log(f"local-only: client {pid + 1}/{len(fed.client_names)} {name}: own test {own['accuracy']:.3f}"
            + (f", server test {server[0]['accuracy']:.3f}" if server else "")
            + f" ({time.perf_counter() - t0:.0f} s)")
    return pd.read_csv(csv_path)
