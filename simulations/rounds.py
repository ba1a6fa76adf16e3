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
    written atomically with a SHA-256 of its content, and ``resume`` continues from it (a
    damaged checkpoint is an error naming it, never a silent restart);
  - a round in which no client trained is a run failure with the clients' reasons (a
    corrupt backbone, NaN settings, clients that all crash), not a "finished" run;
  - ``STOP`` (set on Ctrl-C / SIGTERM while the ServerApp runs in another thread: the Ray
    engine) ends the loop within a second; the round in flight leaves no checkpoint, so
    ``--resume`` continues after the last finished round.

Nodes that come and go (deployment: SuperNodes on other machines, see docs/deployment.md).
Partitions are sampled as above whoever is connected, but each phase is sent only to the
nodes the SuperLink reports connected (``grid.get_node_ids()``: online nodes, those whose
heartbeat is not overdue); a sampled partition whose node is not is a row with status
"offline". Before each phase, connected nodes not yet mapped to a partition are asked for
theirs (the same QUERY as at the start), so a SuperNode restarted with the same partition
(it gets a new node id) takes that partition's place and trains again. In simulation every
node stays connected and mapped, so none of this changes what is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import threading
import time
from contextlib import contextmanager
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log as flwr_log

from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.messages import message_id, with_metadata
from simulations.task import BACKBONE_KEY

CHECKPOINT = "checkpoint.pkl"
CHECKPOINT_MAGIC = b"fedhar-checkpoint-1\n"  # then the SHA-256 of the pickle (32 bytes), then the pickle
POLL_SECONDS = 0.2  # how often replies are pulled (and STOP looked at) while a round waits

STOP = threading.Event()  # set by the runner on Ctrl-C / SIGTERM


class RunStopped(FedharError):
    """The run was stopped (Ctrl-C, SIGTERM) between or during rounds."""


class RunFailed(FedharError):
    """A round in which no client trained: the run cannot go on meaningfully."""


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
    return query_partitions(grid, ids, timeout)


def query_partitions(grid, node_ids, timeout: float) -> dict[int, int]:
    """partition id -> node id for those of ``node_ids`` that answer the QUERY within ``timeout``."""
    queries = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=nid, message_type=MessageType.QUERY)
               for nid in node_ids]
    node_of = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if not reply.has_error():
            node_of[int(reply.content["metrics"]["partition-id"])] = reply.metadata.src_node_id
    return node_of


class Membership:
    """partition id -> node id, kept up to date while SuperNodes leave and (re)join."""

    def __init__(self, node_of: dict[int, int], log, timeout: float):
        self.node_of = dict(node_of)
        self.partitions = sorted(node_of)  # what is sampled from, connected or not
        self.log, self.timeout = log, timeout

    def refresh(self, grid) -> set[int]:
        """The connected node ids, after mapping newly connected nodes to their partitions."""
        online = set(grid.get_node_ids())
        new = sorted(online - set(self.node_of.values()))
        if new:
            for pid, nid in query_partitions(grid, new, self.timeout).items():
                if pid not in self.partitions:
                    flwr_log(WARNING, "node %d holds partition %d, which this run does not have: ignored", nid, pid)
                    continue
                flwr_log(INFO, "partition %d is now node %d (was %d)", pid, nid, self.node_of[pid])
                self.node_of[pid] = nid
                self.log.partition_of[nid] = pid
        return online

    def split(self, partitions, online: set[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """(node ids of the connected ones, [(partition, node id)] of the others)."""
        nodes = [(p, self.node_of[p]) for p in partitions]
        return [n for _, n in nodes if n in online], [(p, n) for p, n in nodes if n not in online]


@contextmanager
def showing(strategy, n_nodes: int):
    """Let a Flower strategy use all ``n_nodes`` a NodeView shows when fewer are connected than
    its minimums (its sample_nodes would wait for them, or fail); restored afterwards."""
    names = [k for k in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes") if hasattr(strategy, k)]
    saved = {k: getattr(strategy, k) for k in names}
    for k, v in saved.items():
        setattr(strategy, k, min(v, n_nodes))
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(strategy, k, v)


def sample_partitions(partitions: list[int], n_train: int, seed: int, server_round: int) -> list[int]:
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(p) for p in rng.choice(sorted(partitions), size=n_train, replace=False))


def save_checkpoint(out_dir: Path, server_round: int, arrays: ArrayRecord, strategy, log, cfg: FLConfig) -> None:
    state = {k: v for k, v in vars(strategy).items() if k != "log"}
    blob = {"round": server_round, "arrays": {k: v.numpy() for k, v in arrays.items()},
            "strategy_state": state, "log_rows": log.rows, "config": cfg.settings()}
    payload = pickle.dumps(blob)
    tmp = out_dir / f"{CHECKPOINT}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(CHECKPOINT_MAGIC + hashlib.sha256(payload).digest() + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_dir / CHECKPOINT)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary behind


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's content; a damaged file (truncated, overwritten, not a checkpoint) is an
    error naming it."""
    data = path.read_bytes()
    damaged = f"{path}: the checkpoint is damaged ({{}}); cannot resume: start again with --overwrite"
    if not data.startswith(CHECKPOINT_MAGIC):
        raise FedharError(damaged.format("not a fedhar checkpoint"))
    digest, payload = data[len(CHECKPOINT_MAGIC):][:32], data[len(CHECKPOINT_MAGIC) + 32:]
    if hashlib.sha256(payload).digest() != digest:
        raise FedharError(damaged.format("its checksum does not match: truncated or overwritten"))
    return pickle.loads(payload)


def load_checkpoint(out_dir: Path, cfg: FLConfig) -> dict | None:
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    blob = read_checkpoint(path)
    ignore = {"resume", "overwrite", "rounds", "out-dir", "backbone", "inject-failure", "tensorboard"}
    # a field added to FLConfig after the checkpoint was written counts as its default
    saved = {**FLConfig().settings(), **blob["config"]}
    now = {k: v for k, v in cfg.settings().items() if k not in ignore}
    changed = sorted(k for k in now if saved.get(k) != now[k])
    if changed:
        raise FedharError(f"{path}: cannot resume, the configuration differs in {changed} "
                          f"(was {json.dumps({k: saved.get(k) for k in changed})})")
    return blob


def run_rounds(strategy, grid, arrays: ArrayRecord, cfg: FLConfig, log, out_dir: Path,
               node_of: dict[int, int], first_round: int = 1, after_aggregation=None,
               after_round=None, secure=None) -> ArrayRecord:
    """Rounds first_round..cfg.rounds; ``after_aggregation(round, arrays)`` sees each round's
    new global arrays before the clients evaluate them (server-side evaluation);
    ``after_round(round)`` is called once the round is recorded (progress, tracking).
    ``secure``: a ``simulations.secure_aggregation.SecureAggregation``, which then runs each
    train phase (SecAgg+: the server gets the clients' metrics and the mean of their updates)."""
    members = Membership(node_of, log, cfg.round_timeout)
    n_train = cfg.clients_per_round(len(members.partitions))
    for server_round in range(first_round, cfg.rounds + 1):
        _check_stop(server_round)
        flwr_log(INFO, "")
        flwr_log(INFO, "[ROUND %s/%s]", server_round, cfg.rounds)
        sampled = sample_partitions(members.partitions, n_train, cfg.seed, server_round)
        chosen, offline = members.split(sampled, members.refresh(grid))
        _offline_rows(log, server_round, "train", offline)
        messages = []
        if chosen:
            with showing(strategy, len(chosen)):
                messages = list(strategy.configure_train(server_round, arrays, round_config(cfg), NodeView(grid, chosen)))
        # in partition order: aggregation sums in a fixed order, so reruns agree bit for bit
        pid_of = {n: p for p, n in members.node_of.items()}
        secured = secure.train(grid, messages, server_round) if secure is not None and messages else None
        replies = sorted(secured.replies if secured else exchange(grid, messages, cfg.round_timeout),
                         key=lambda r: pid_of.get(r.metadata.src_node_id, -1))
        _timeout_rows(log, server_round, "train", chosen, replies, cfg.round_timeout)
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
            if secured is not None:
                secured.replies = replies
                new_arrays = secure.aggregate(strategy, server_round, secured, log)
            else:
                new_arrays, _ = strategy.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = as_float32(new_arrays)
        _check_trained(log, server_round)
        if after_aggregation is not None:
            after_aggregation(server_round, arrays)
        connected, offline = members.split(members.partitions, members.refresh(grid))
        if not cfg.clients_evaluate(server_round):
            connected, offline = [], []
        _offline_rows(log, server_round, "evaluate", offline)
        if connected:
            with showing(strategy, len(connected)):
                evaluate = list(strategy.configure_evaluate(server_round, arrays, round_config(cfg),
                                                            NodeView(grid, connected)))
            replies = exchange(grid, evaluate, cfg.round_timeout)
            _timeout_rows(log, server_round, "evaluate", [m.metadata.dst_node_id for m in evaluate], replies,
                          cfg.round_timeout)
            strategy.aggregate_evaluate(server_round, replies)
        else:
            log.flush()
        _check_stop(server_round)
        save_checkpoint(out_dir, server_round, arrays, strategy, log, cfg)
        if after_round is not None:
            after_round(server_round)
    return arrays


def as_float32(arrays: ArrayRecord) -> ArrayRecord:
    """Flower's server optimisers (FedAdam, ...) return float64 arrays; the model is float32,
    and sending float64 would double every download."""
    if all(a.dtype != "float64" for a in arrays.values()):
        return arrays
    return ArrayRecord({k: Array(v.numpy().astype(np.float32)) if v.dtype == "float64" else v
                        for k, v in arrays.items()})


def exchange(grid, messages: list[Message], timeout: float) -> list[Message]:
    """``grid.send_and_receive``, with each reply attributed to the node its message was for,
    and given up when ``STOP`` is set.

    The SuperLink itself answers a message whose node stopped sending heartbeats (NODE_UNAVAILABLE,
    once 2 heartbeat intervals have passed): that error reply's src_node_id is the SuperLink's
    (SUPERLINK_NODE_ID), so such a reply is replaced by a copy whose src_node_id is the node the
    message went to. A message's id is on the message itself where Flower's grids put it; the
    inline grid cannot put it there (no public setter), and its ids are ``message_id(msg)``."""
    if not messages:
        return []
    replies = list(_send_and_receive(grid, messages, timeout))
    dst_of = {m.metadata.message_id or message_id(m): m.metadata.dst_node_id for m in messages}
    for k, r in enumerate(replies):
        dst = dst_of.get(r.metadata.reply_to_message_id)
        if r.has_error() and dst is not None and r.metadata.src_node_id != dst:
            replies[k] = with_metadata(r, src_node_id=dst)
    return replies


def _send_and_receive(grid, messages: list[Message], timeout: float):
    """What Flower's grids do (push, then pull until all replies or the timeout), looking at
    ``STOP`` between pulls. The inline grid delivers in this very thread (Ctrl-C reaches it
    directly) and applies its own timeout rules: it keeps its send_and_receive."""
    if getattr(grid, "delivers_in_this_thread", False):  # simulations.inline.InlineGrid
        return grid.send_and_receive(messages, timeout=timeout)
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies = []
    while waiting and time.monotonic() < deadline:
        if STOP.is_set():
            raise RunStopped("stopped while waiting for the clients' replies")
        got = list(grid.pull_messages(list(waiting)))
        replies += got
        waiting -= {r.metadata.reply_to_message_id for r in got}
        if waiting:
            time.sleep(POLL_SECONDS)
    return replies


def round_config(cfg) -> ConfigRecord:
    """What every train / evaluate message carries besides the strategy's own keys: the
    backbone the server uses, so a client whose run config names none (a by-hand
    ``flwr run .``) loads it instead of looking for its cached pretraining on every message."""
    return ConfigRecord({BACKBONE_KEY: str(cfg.backbone)})


def _check_stop(server_round: int) -> None:
    if STOP.is_set():
        raise RunStopped(f"stopped in round {server_round}; the checkpoint holds the rounds before it")


def client_reason(error: str) -> str:
    """A failed reply's reason on one line, the client's own words first: Flower wraps a
    ClientApp's exception as ``<class '...ClientAppException'>:<'... Message: <what it
    raised>'>`` (on Ray, after a traceback of the actor), which hid the reason behind 200
    characters of wrapping. Kept: the wrapper's class name, then the message."""
    marker = "Message: "
    if marker in error:
        wrapper = re.match(r"<class '([^']+)'>", error)
        name = wrapper.group(1).rsplit(".", 1)[-1] + ": " if wrapper else ""
        error = name + error[error.rindex(marker) + len(marker):].removesuffix("'>")
    return " ".join(error.split())


def _check_trained(log, server_round: int) -> None:
    """A round in which no client trained is a run failure, with the clients' own reasons."""
    rows = [r for r in log.rows if r.get("round") == server_round and r.get("phase") in ("train", "aggregate")]
    if any(r.get("phase") == "train" and r.get("status") in ("ok", "not aggregated") for r in rows):
        return
    log.flush()  # clients.csv keeps this round's failure rows for diagnosis
    reasons = sorted({client_reason(str(r.get("error") or r.get("status")))
                      for r in rows if r.get("phase") == "train"})
    shown = "; ".join(reason[:200] for reason in reasons[:3]) or "no client was sampled or connected"
    raise RunFailed(f"round {server_round}: no client trained ({shown}); the checkpoint holds the rounds "
                    f"before it (see {log.path})")


def _offline_rows(log, server_round: int, phase: str, offline: list[tuple[int, int]]) -> None:
    for pid, nid in offline:
        log.add({"round": server_round, "phase": phase, "node_id": nid, "partition_id": pid, "status": "offline",
                 "error": f"node {nid} (partition {pid}) is not connected to the SuperLink"})


def _timeout_rows(log, server_round: int, phase: str, sent_to, replies, timeout: float) -> None:
    answered = {r.metadata.src_node_id for r in replies}
    for nid in sorted(set(sent_to) - answered):
        log.add({"round": server_round, "phase": phase, "node_id": nid, "status": "timeout",
                 "error": f"no reply within {timeout:.0f} s"})


def _failure_rows(server_round, replies, node_of):
    for r in replies:
        row = {"round": server_round, "phase": "train", "node_id": r.metadata.src_node_id}
        if r.has_error():
            row.update(status="failed", error=r.error.reason)
        else:
            row.update(status="not aggregated", error="too few replies this round")
        yield row
