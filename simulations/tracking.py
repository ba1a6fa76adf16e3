"""Per-round metrics to TensorBoard (``--tensorboard DIR``), with the run's configuration.

Each run logs to DIR/<run folder name>: every numeric column of its rounds.csv row as the
scalar ``round/<column>`` at step = round (accuracy, macro_f1, train_loss, bytes_up, ...,
server_/heldout_ scores and drift where the run has them), the round's wall seconds, and the
resolved configuration as text. ``tensorboard --logdir DIR`` compares runs side by side.
"""

from __future__ import annotations

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


def tracker_for(cfg, out_dir: Path):
    """The run's tracker, or None when --tensorboard is not given."""
    if not cfg.tensorboard:
        return None
    return TensorBoardTracker(cfg.tensorboard, Path(out_dir).name, cfg.to_json())
