"""Per-client, per-round records for any Flower strategy.

Flower's strategies aggregate client metrics into one number per round; fedhar's result
tables need every client's reply (and every failure). ``recording(StrategyClass)`` makes a
subclass whose ``aggregate_train`` / ``aggregate_evaluate`` first write one row per reply
into a ``RoundLog``, then aggregate exactly as the parent does.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Message


class RoundLog:
    """Tidy rows (one per client, round and phase), rewritten to CSV after every phase."""

    def __init__(self, path: Path, client_names: list[str] | None = None):
        self.path = Path(path)
        self.client_names = client_names or []
        self.partition_of: dict[int, int] = {}  # node id -> partition id, once known
        self.rows: list[dict] = []

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


def _rows(server_round: int, phase: str, replies: list[Message]) -> list[dict]:
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


def recording(strategy_cls: type) -> type:
    """A subclass of ``strategy_cls`` that logs each client's reply before aggregating."""

    class Recording(strategy_cls):
        def __init__(self, *args, log: RoundLog, **kwargs):
            super().__init__(*args, **kwargs)
            self.log = log

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):
            replies = list(replies)
            rows = _rows(server_round, "train", replies)
            result = super().aggregate_train(server_round, replies)
            rejected = getattr(self, "last_rejected", {})  # set by validating strategies
            for row in rows:
                if row["node_id"] in rejected:
                    row.update(status="rejected", error=rejected[row["node_id"]])
                self.log.add(row)
            self.log.flush()
            return result

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
            replies = list(replies)
            for row in _rows(server_round, "evaluate", replies):
                self.log.add(row)
            self.log.flush()
            return super().aggregate_evaluate(server_round, replies)

    Recording.__name__ = Recording.__qualname__ = f"Recording{strategy_cls.__name__}"
    return Recording
