"""fedhar from Python: the LODO baseline and saved models, as pandas tables.

    import fedhar

    table = fedhar.run_lodo(data="uci-har", modes="lora,qlora", out_dir="runs/lodo")
    fedhar.evaluate("runs/RUN/model", data="synthetic")

(``run_lodo``, not ``lodo``: ``fedhar.lodo`` is the module that implements it.) Options are
those of ``fedhar lodo`` with underscores (``heldout_data``, ``out_dir``, ...). A federation
from Python is ``simulations.federate`` (simulations/api.py): the library core does not
import the Flower app.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from fedhar.errors import FedharError
from fedhar.options import split_names, unknown_name


def run_lodo(data, out_dir, heldout_data=(), fresh_process: bool = False, **options) -> pd.DataFrame:
    """The centralised Leave-One-Dataset-Out baseline; every row of OUT_DIR/runs.csv.

    fresh_process=True runs each fine-tuning in a new (spawned) process, for clean peak-memory
    numbers as ``fedhar lodo`` does; the calling script then needs a ``__main__`` guard."""
    from fedhar.lodo import LodoPlan
    from fedhar.lodo import run_lodo as run

    names = [f.name for f in fields(LodoPlan)]
    check_keys(options, [n for n in names if n not in ("datasets", "held_out", "fresh_process")], "fedhar.run_lodo")
    list_defaults = {f.name: f.default for f in fields(LodoPlan) if isinstance(f.default, tuple)}
    # a list option may be given as a comma string, as on the command line: "lora,qlora", "none,other", "4,8"
    listed: dict[str, Any] = {k: _listed(v, list_defaults[k]) if k in list_defaults and isinstance(v, str) else v
                              for k, v in options.items()}
    plan = LodoPlan(datasets=tuple(_names(data)), held_out=tuple(_names(heldout_data)), fresh_process=fresh_process,
                    **listed)
    return run(plan, Path(out_dir), command="fedhar.run_lodo(...)")


def _listed(text: str, default: tuple) -> tuple:
    """"a,b" -> ("a", "b"), each converted as the option's default values are (int, float, str)."""
    kind = type(default[0]) if default else str
    try:
        return tuple(kind(item) for item in split_names(text))
    except ValueError:
        raise FedharError(f"fedhar.run_lodo: {text!r} is not a comma-separated list of {kind.__name__}") from None


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


def check_keys(given, known: list[str], where: str) -> None:
    for key in given:
        if key not in known:
            raise FedharError(f"{where}: " + unknown_name("option", key, known))
