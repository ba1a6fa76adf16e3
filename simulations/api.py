"""A federation from Python, its tables as pandas DataFrames.

    from simulations import federate
    import fedhar

    run = federate(data="synthetic", strategy="fedsa", rounds=3)
    run.rounds            # one row per round (rounds.csv)
    run.clients           # one row per client, round and phase (clients.csv)
    fedhar.evaluate(run.model_dir, data="synthetic")

Options are those of ``fedhar fl`` with underscores (``heldout_data``, ``out_dir``, ...).
It runs in the calling process by default (the inline engine), so a plain script or a
notebook needs no ``if __name__ == "__main__":`` guard; ``engine="ray"`` runs clients in Ray
actors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from fedhar.api import check_keys
from simulations.config import FLConfig
from simulations.run import run_inprocess


@dataclass
class FederatedRun:
    """A finished federated run: its tables as DataFrames, and where its files are."""

    out_dir: Path
    rounds: pd.DataFrame
    clients: pd.DataFrame
    config: dict

    @property
    def model_dir(self) -> Path:
        return self.out_dir / "model"


def federate(config=None, engine: str = "inline", **options) -> FederatedRun:
    """One federated run. ``config``: an FLConfig, or a dict of its fields (underscores or
    hyphens, as in a Flower run config); ``options`` override it."""
    values = {}
    if isinstance(config, FLConfig):
        values = {f.name: getattr(config, f.name) for f in fields(FLConfig)}
    elif config:
        values = {k.replace("-", "_"): v for k, v in dict(config).items()}
    values.update(options)
    check_keys(values, [f.name for f in fields(FLConfig)], "simulations.federate")
    out_dir = run_inprocess(FLConfig(**values), engine=engine)
    return FederatedRun(out_dir, pd.read_csv(out_dir / "rounds.csv"), pd.read_csv(out_dir / "clients.csv"),
                        json.loads((out_dir / "config.json").read_text()))
