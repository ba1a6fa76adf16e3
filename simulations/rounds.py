"""The server's round loop: reproducible client sampling, failures recorded, resumable.

Flower's ``Strategy.start`` runs every round in one go and samples clients with Python's
global ``random`` over node ids that change from run to run. fedhar drives the same
strategy methods (configure_train, aggregate_train, configure_evaluate,
aggregate_evaluate) itself so that:
  - clients are sampled by partition id with a generator seeded by (seed, round), so a
    resumed run trains exactly the clients an uninterrupted run would have;
  - clients that fail, time out, or are rejected are rows in clients.csv, and a round with
    fewer than ``min_train_replies`` replies leaves the global adapters unchanged;
  - after every round a checkpoint (global arrays, strategy state, log rows, round) is
    written atomically, and ``resume`` continues from it.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore import log as flwr_log

from fedhar.errors import FedharError
from simulations.config import FLConfig

CHECKPOINT = "checkpoint.pkl"


class NodeView:
    """A Grid that shows a strategy only some nodes (the ones sampled for this round)."""

    def __init__(self, grid, node_ids):
        self._grid, self._ids = grid, list(node_ids)

    def get_node_ids(self):
        return list(self._ids)

    def __getattr__(self, name):
        return getattr(self._grid, name)


def discover_partitions(grid, n_clients: int, timeout: float) -> dict[int, int]:
    """partition id -> node id, by asking every node (after all n_clients have connected)."""
    deadline = time.monotonic() + timeout
    while len(ids := list(grid.get_node_ids())) < n_clients:
        if time.monotonic() > deadline:
            raise FedharError(f"only {len(ids)} of {n_clients} clients connected within {timeout:.0f} s")
        time.sleep(0.5)
    queries = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=nid, message_type=MessageType.QUERY)
               for nid in ids]
    node_of = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if not reply.has_error():
            node_of[int(reply.content["metrics"]["partition-id"])] = reply.metadata.src_node_id
    return node_of


def sample_partitions(partitions: list[int], n_train: int, seed: int, server_round: int) -> list[int]:
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(p) for p in rng.choice(sorted(partitions), size=n_train, replace=False))


def save_checkpoint(out_dir: Path, server_round: int, arrays: ArrayRecord, strategy, log, cfg: FLConfig) -> None:
    state = {k: v for k, v in vars(strategy).items() if k != "log"}
    blob = {"round": server_round, "arrays": {k: v.numpy() for k, v in arrays.items()},
            "strategy_state": state, "log_rows": log.rows, "config": cfg.to_run_config()}
    tmp = out_dir / (CHECKPOINT + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(blob, f)
    os.replace(tmp, out_dir / CHECKPOINT)


def load_checkpoint(out_dir: Path, cfg: FLConfig) -> dict | None:
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    with open(path, "rb") as f:
        blob = pickle.load(f)
    ignore = {"resume", "rounds", "out-dir", "backbone", "inject-failure"}
    saved = {k: v for k, v in blob["config"].items() if k not in ignore}
    now = {k: v for k, v in cfg.to_run_config().items() if k not in ignore}
    changed = sorted(k for k in now if saved.get(k) != now[k])
    if changed:
        raise FedharError(f"{path}: cannot resume, the configuration differs in {changed} "
                          f"(was {json.dumps({k: saved.get(k) for k in changed})})")
    return blob


def run_rounds(strategy, grid, arrays: ArrayRecord, cfg: FLConfig, log, out_dir: Path,
               node_of: dict[int, int], first_round: int = 1) -> ArrayRecord:
    n_train = max(1, int(round(cfg.fraction_train * len(node_of))))
    everyone = [node_of[p] for p in sorted(node_of)]
    for server_round in range(first_round, cfg.rounds + 1):
        flwr_log(INFO, "")
        flwr_log(INFO, "[ROUND %s/%s]", server_round, cfg.rounds)
        chosen = [node_of[p] for p in sample_partitions(list(node_of), n_train, cfg.seed, server_round)]
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), NodeView(grid, chosen)))
        # in partition order: aggregation sums in a fixed order, so reruns agree bit for bit
        pid_of = {n: p for p, n in node_of.items()}
        replies = sorted(grid.send_and_receive(messages, timeout=cfg.round_timeout),
                         key=lambda r: pid_of.get(r.metadata.src_node_id, -1))
        answered = {r.metadata.src_node_id for r in replies}
        for nid in sorted(set(chosen) - answered):
            log.add({"round": server_round, "phase": "train", "node_id": nid, "status": "timeout",
                     "error": f"no reply within {cfg.round_timeout:.0f} s"})
        arrived = [r for r in replies if not r.has_error()]
        if len(arrived) < cfg.min_train_replies:
            flwr_log(WARNING, "round %d: %d replies < min-train-replies %d: global adapters unchanged",
                     server_round, len(arrived), cfg.min_train_replies)
            log.add({"round": server_round, "phase": "aggregate", "status": "skipped",
                     "error": f"{len(arrived)} replies < min-train-replies {cfg.min_train_replies}"})
            for row in _failure_rows(server_round, replies, node_of):
                log.add(row)
            log.flush()
        else:
            new_arrays, _ = strategy.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = new_arrays
        evaluate = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), NodeView(grid, everyone)))
        strategy.aggregate_evaluate(server_round, grid.send_and_receive(evaluate, timeout=cfg.round_timeout))
        save_checkpoint(out_dir, server_round, arrays, strategy, log, cfg)
    return arrays


def _failure_rows(server_round, replies, node_of):
    for r in replies:
        row = {"round": server_round, "phase": "train", "node_id": r.metadata.src_node_id}
        if r.has_error():
            row.update(status="failed", error=r.error.reason)
        else:
            row.update(status="not aggregated", error="too few replies this round")
        yield row
