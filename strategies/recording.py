"""Per-client, per-round records for any Flower strategy.

Flower's strategies aggregate client metrics into one number per round; fedhar's result
tables need every client's reply (and every failure). ``recording(StrategyClass)`` makes a
subclass whose ``aggregate_train`` / ``aggregate_evaluate`` first write one row per reply
into a ``RoundLog``, then aggregate exactly as the parent does.

It also remembers what ``configure_train`` sent to each node (the global trainable state,
as the strategy's downlink shaped it: FedSA without B, HetLoRA truncated per node, FLoRA
without adapters) and, after aggregating, computes for the accepted replies each client's
drift and each layer's aggregation inexactness (``fedhar.drift``), appended every round
to ``drift.csv`` and ``inexactness.csv`` beside clients.csv (schemas in ``fedhar.drift``).
Those rows are not kept in memory nor checkpointed: the first ``configure_train`` of a
process drops from both files the rows of its round and later ones (left by a run that
stopped after writing them but before its checkpoint; all of them for a run that starts
at round 1), so a resumed run never repeats rows.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from logging import WARNING
from pathlib import Path

from flwr.app import Message
from flwr.common import log as flwr_log

from fedhar import lora_math as lm
from fedhar.drift import DRIFT_COLUMNS, INEXACTNESS_COLUMNS, drift_tables

DRIFT_CSV = "drift.csv"
INEXACTNESS_CSV = "inexactness.csv"


class RoundLog:
    """Tidy rows (one per client, round and phase), rewritten to CSV after every phase."""

    def __init__(self, path: Path, client_names: list[str] | None = None):
        self.path = Path(path)
        self.client_names = client_names or []
        self.partition_of: dict[int, int] = {}  # node id -> partition id, once known
        self.rows: list[dict] = []
        self.tables_from: int | None = None  # first round this process appends tables for

    def identify(self, node_id: int | None, partition_id: int | None = None) -> tuple[int | None, str | None]:
        """(partition id, client name) of a node, resolved as ``add`` does; None where unknown."""
        if partition_id is None and node_id in self.partition_of:
            partition_id = self.partition_of[node_id]
        name = None
        if partition_id is not None and 0 <= int(partition_id) < len(self.client_names):
            name = self.client_names[int(partition_id)]
        return partition_id, name

    def table_path(self, name: str) -> Path:
        """A table beside clients.csv."""
        return self.path.parent / name

    def start_tables(self, tables: dict[str, Sequence[str]], first_round: int) -> None:
        """Once per process, before appending: drop the rows of rounds >= ``first_round`` from
        each table (name -> columns), and incomplete rows; the file is rewritten atomically
        with those columns, or removed when nothing is left."""
        if self.tables_from is not None:
            return
        self.tables_from = first_round
        for name, columns in tables.items():
            path = self.table_path(name)
            if not path.exists():
                continue
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if _complete(row) and _round_of(row) < first_round]
            if not kept:
                path.unlink()
                continue
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)
            tmp.replace(path)

    def append_table(self, name: str, rows: list[dict], columns: Sequence[str]) -> None:
        """Append ``rows`` to a table beside clients.csv (header written when it is new)."""
        path = self.table_path(name)
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    def add(self, row: dict) -> None:
        if row.get("partition_id") is None and row.get("node_id") in self.partition_of:
            row = {**row, "partition_id": self.partition_of[row["node_id"]]}
        pid = row.get("partition_id")
        if pid is not None and 0 <= int(pid) < len(self.client_names):
            row = {"client": self.client_names[int(pid)], **row}
        self.rows.append(row)

    def flush(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


def reply_rows(server_round: int, phase: str, replies: list[Message]) -> list[dict]:
    """One clients.csv row per reply: its metrics, or its error."""
    rows = []
    for msg in replies:
        row = {"round": server_round, "phase": phase, "node_id": msg.metadata.src_node_id}
        if msg.has_error():
            row.update(status="failed", error=msg.error.reason)
        else:
            row["status"] = "ok"
            for record in msg.content.metric_records.values():
                row.update({k.replace("-", "_"): v for k, v in record.items()})
        rows.append(row)
    return rows


def _complete(row: dict) -> bool:
    return None not in row and all(v is not None for v in row.values())


def _round_of(row: dict) -> float:
    try:
        return int(row.get("round", ""))
    except ValueError:
        return float("inf")  # unreadable: dropped


def _sent_states(messages: list[Message], key: str) -> dict[int, dict]:
    """node id -> the LoRA tensors sent to it (one dict per distinct ArrayRecord, shared)."""
    parsed: dict[int, dict] = {}
    out = {}
    for msg in messages:
        record = msg.content.array_records.get(key)
        if record is None:
            continue
        if id(record) not in parsed:
            parsed[id(record)] = {k: v.numpy() for k, v in record.items() if lm.split_adapter_key(k)}
        out[msg.metadata.dst_node_id] = parsed[id(record)]
    return out


def recording(strategy_cls: type) -> type:
    """A subclass of ``strategy_cls`` that logs each client's reply before aggregating."""

    class Recording(strategy_cls):
        def __init__(self, *args, log: RoundLog, **kwargs):
            super().__init__(*args, **kwargs)
            self.log = log
            self._drift_sent: dict[int, dict] = {}  # node id -> what configure_train sent it

        def configure_train(self, server_round: int, arrays, config, grid):
            try:
                self.log.start_tables({DRIFT_CSV: DRIFT_COLUMNS, INEXACTNESS_CSV: INEXACTNESS_COLUMNS},
                                      server_round)
            except (OSError, csv.Error, UnicodeDecodeError) as e:  # a diagnostic must not end a run
                flwr_log(WARNING, "drift / inexactness tables not reset: %r", e)
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self._drift_sent = _sent_states(messages, getattr(self, "arrayrecord_key", "arrays"))
            return messages

        def configure_evaluate(self, server_round: int, arrays, config, grid):
            self._drift_sent = {}  # never checkpointed (vars(strategy) is)
            return super().configure_evaluate(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):
            replies = list(replies)
            rows = reply_rows(server_round, "train", replies)
            result = super().aggregate_train(server_round, replies)
            rejected = getattr(self, "last_rejected", {})  # set by validating strategies
            for row in rows:
                if row["node_id"] in rejected:
                    row.update(status="rejected", error=rejected[row["node_id"]])
                self.log.add(row)
            self.log.flush()
            sent, self._drift_sent = self._drift_sent, {}
            try:
                self._record_drift(server_round, replies, rejected, sent)
            except Exception as e:  # a diagnostic must not end a federated run
                flwr_log(WARNING, "round %d: drift / inexactness not recorded: %r", server_round, e)
            return result

        def aggregate_unrecorded(self, server_round: int, replies: Iterable[Message]):
            """The rule's own aggregate_train, without rows or drift: secure aggregation
            (simulations/secure_aggregation.py) writes the clients' rows itself and hands the
            rule one reply, the unmasked mean."""
            return super().aggregate_train(server_round, replies)

        def _record_drift(self, server_round: int, replies: list[Message], rejected, sent: dict) -> None:
            """drift.csv and inexactness.csv rows for the accepted replies of the nodes sent to."""
            if not sent:
                return
            key = getattr(self, "arrayrecord_key", "arrays")
            weight_key = getattr(self, "weighted_by_key", "num-examples")
            given, states, weights, pids, names = [], [], [], [], []
            for msg in replies:
                nid = msg.metadata.src_node_id
                if msg.has_error() or nid in rejected or nid not in sent:
                    continue
                records = msg.content.array_records
                record = records.get(key) if key in records else None
                if record is None and len(records) == 1:
                    record = next(iter(records.values()))
                metrics = {k: v for m in msg.content.metric_records.values() for k, v in m.items()}
                weight = metrics.get(weight_key)
                if record is None or isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                        or not weight > 0:
                    continue
                pid = metrics.get("partition-id")
                pid, name = self.log.identify(nid, pid if isinstance(pid, int) else None)
                given.append(sent[nid])
                states.append({k: v.numpy() for k, v in record.items() if lm.split_adapter_key(k)})
                weights.append(float(weight))
                pids.append(pid)
                names.append(name)
            if not states:
                return
            drift, inexact = drift_tables(server_round, given, states, weights, partition_ids=pids,
                                          client_names=names, fresh_adapters=getattr(self, "fresh_adapters", False))
            if drift:
                self.log.append_table(DRIFT_CSV, drift, DRIFT_COLUMNS)
            if inexact:
                self.log.append_table(INEXACTNESS_CSV, inexact, INEXACTNESS_COLUMNS)

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
            replies = list(replies)
            for row in reply_rows(server_round, "evaluate", replies):
                self.log.add(row)
            self.log.flush()
            return super().aggregate_evaluate(server_round, replies)

    Recording.__name__ = Recording.__qualname__ = f"Recording{strategy_cls.__name__}"
    return Recording
