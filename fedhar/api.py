"""fedhar from Python: a federation, the LODO baseline and saved models, as pandas tables.

    import fedhar

    run = fedhar.federate(data="synthetic", strategy="fedsa", rounds=3)
    run.rounds            # one row per round (rounds.csv)
    run.clients           # one row per client, round and phase (clients.csv)
    fedhar.evaluate(run.model_dir, data="synthetic")

    table = fedhar.run_lodo(data="uci-har", modes="lora,qlora", out_dir="runs/lodo")

(``run_lodo``, not ``lodo``: ``fedhar.lodo`` is the module that implements it.)
Options are those of ``fedhar fl`` / ``fedhar lodo`` with underscores (``heldout_data``,
``out_dir``, ...). Everything runs in the calling process by default (the inline engine,
LODO runs one after the other), so a plain script or a notebook needs no
``if __name__ == "__main__":`` guard; ``engine="ray"`` runs clients in Ray actors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from fedhar.errors import FedharError
from fedhar.options import split_names, unknown_name


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
    import json

    from simulations.config import FLConfig
    from simulations.run import run_inprocess

    values = {}
    if isinstance(config, FLConfig):
        values = {f.name: getattr(config, f.name) for f in fields(FLConfig)}
    elif config:
        values = {k.replace("-", "_"): v for k, v in dict(config).items()}
    values.update(options)
    _check_keys(values, [f.name for f in fields(FLConfig)], "federate")
    cfg = FLConfig(**values)
    out_dir = run_inprocess(cfg, engine=engine)
    return FederatedRun(out_dir, pd.read_csv(out_dir / "rounds.csv"), pd.read_csv(out_dir / "clients.csv"),
                        json.loads((out_dir / "config.json").read_text()))


def run_lodo(data, out_dir, heldout_data=(), fresh_process: bool = False, **options) -> pd.DataFrame:
    """The centralised Leave-One-Dataset-Out baseline; every row of OUT_DIR/runs.csv.

    fresh_process=True runs each fine-tuning in a new (spawned) process, for clean peak-memory
    numbers as ``fedhar lodo`` does; the calling script then needs a ``__main__`` guard."""
    from fedhar.lodo import LodoPlan
    from fedhar.lodo import run_lodo as run

    names = [f.name for f in fields(LodoPlan)]
    _check_keys(options, [n for n in names if n not in ("datasets", "held_out", "fresh_process")], "run_lodo")
    listed = {k: tuple(split_names(v)) if k == "modes" and isinstance(v, str) else v for k, v in options.items()}
    plan = LodoPlan(datasets=tuple(_names(data)), held_out=tuple(_names(heldout_data)), fresh_process=fresh_process,
                    **listed)
    return run(plan, Path(out_dir), command="fedhar.run_lodo(...)")


def evaluate(model_dir, data: str, client: str | None = None, data_dir=None, synthetic=None) -> dict:
    """A saved model's accuracy, macro-F1, precision and recall on every window of ``data``."""
    from fedhar.model.saved import score

    return score(model_dir, data, data_dir, client, synthetic)


def load_model(model_dir, client: str | None = None):
    """(torch model, metadata) of a saved model folder; adapters loaded with peft."""
    from fedhar.model.saved import load_model as load

    return load(model_dir, client)


def _names(value) -> list[str]:
    return split_names(value) if isinstance(value, str) else list(value or ())


def _check_keys(given, known: list[str], where: str) -> None:
    for key in given:
        if key not in known:
            raise FedharError(f"fedhar.{where}: " + unknown_name("option", key, known))
