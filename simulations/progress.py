"""A federated run as it goes: one compact line per finished round, a bar over the rounds.

    round 2/3  acc 0.812  F1 0.790  loss 0.512  up 0.42 MB  down 0.42 MB  11.8 s

acc / F1: the clients' example-weighted test accuracy and macro-F1 of the new global model;
loss: mean training loss; MB = 10^6 bytes sent by the clients (up) and to them (down);
seconds: the round's wall time. Server-side and held-out accuracy follow when the run has
them, and failed / rejected clients are counted. Every column is in rounds.csv.
"""

from __future__ import annotations

import math
import time

from fedhar.console import progress, say

MB = 1e6


def round_line(row: dict, rounds: int, seconds: float | None = None) -> str:
    def num(key: str) -> str:
        value = row.get(key)
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    parts = [f"round {int(row['round'])}/{rounds}", f"acc {num('accuracy')}", f"F1 {num('macro_f1')}",
             f"loss {num('train_loss')}", f"up {row.get('bytes_up', 0) / MB:.2f} MB",
             f"down {row.get('bytes_down', 0) / MB:.2f} MB"]
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    if num("recon_loss") != "-":  # federated pretraining: masked MSE on the clients' test windows
        parts.append(f"recon {num('recon_loss')}")
    for phase in ("server", "heldout"):
        if num(f"{phase}_accuracy") != "-":
            parts.append(f"{phase} acc {num(f'{phase}_accuracy')}")
    for key in ("failed", "rejected", "offline"):
        if row.get(key):
            parts.append(f"{int(row[key])} {key}")
    return "  ".join(parts)


class RoundProgress:
    """Called after every round with that round's row of rounds.csv."""

    def __init__(self, rounds: int, first_round: int = 1, tracker=None):
        self.rounds, self.tracker = rounds, tracker
        self.bar = progress(total=rounds, initial=first_round - 1, desc="rounds", unit="round")
        self.t0 = time.perf_counter()

    def update(self, row: dict) -> None:
        now = time.perf_counter()
        seconds, self.t0 = now - self.t0, now
        say(round_line(row, self.rounds, seconds))
        if self.tracker is not None:
            self.tracker.log_round(row, seconds)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        if self.tracker is not None:
            self.tracker.close()
