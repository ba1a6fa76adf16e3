"""Per-round metrics to TensorBoard (``--tensorboard DIR``), with the run's configuration.

Each run logs to DIR/<run folder name>: every numeric column of its rounds.csv row as the
scalar ``round/<column>`` at step = round (accuracy, macro_f1, train_loss, bytes_up, ...,
server_/heldout_ scores and drift where the run has them), the round's wall seconds, and the
resolved configuration as text. ``tensorboard --logdir DIR`` compares runs side by side.

``round_listener(fn)``: while the block runs, every run in this process also calls
``fn(row, seconds)`` after each round (``fedhar sweep`` reports each round to Ray Tune).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from fedhar.errors import FedharError


class TensorBoardTracker:
    def __init__(self, log_dir: str | Path, run_name: str, config_json: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FedharError("--tensorboard needs the tensorboard package: pip install 'fedhar[tracking]'") from None
        self.path = Path(log_dir) / run_name
        self.writer = SummaryWriter(log_dir=str(self.path))
        self.writer.add_text("config", f"```json\n{config_json}\n```", global_step=0)

    def log_round(self, row: dict, seconds: float) -> None:
        step = int(row["round"])
        for key, value in row.items():
            if key != "round" and isinstance(value, (int, float)) and not math.isnan(value):
                self.writer.add_scalar(f"round/{key}", value, step)
        self.writer.add_scalar("round/seconds", seconds, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


_LISTENERS: list = []


@contextlib.contextmanager
def round_listener(fn):
    """``fn(row, seconds)`` after every round of the runs inside the block (this process)."""
    _LISTENERS.append(fn)
    try:
        yield fn
    finally:
        _LISTENERS.remove(fn)


class _Trackers:
    def __init__(self, trackers: list, listeners: list):
        self.trackers, self.listeners = trackers, listeners

    def log_round(self, row: dict, seconds: float) -> None:
        for tracker in self.trackers:
            tracker.log_round(row, seconds)
        for fn in self.listeners:
            fn(row, seconds)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def tracker_for(cfg, out_dir: Path):
    """The run's tracker (--tensorboard, round listeners), or None when there is neither."""
    trackers = [TensorBoardTracker(cfg.tensorboard, Path(out_dir).name, cfg.to_json())] if cfg.tensorboard else []
    if not trackers and not _LISTENERS:
        return None
    return _Trackers(trackers, list(_LISTENERS))
