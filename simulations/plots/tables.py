"""Reading result tables for figures: checked, traced by sha256, never a traceback.

Three kinds of input, told apart by what a path holds:
  sweep  a folder with results.csv (one row per trial and round; trials/<trial_id>/ or
         tune/<experiment>/<trial_id>/run/ beside it
         may hold each trial's drift.csv and inexactness.csv), or that results.csv itself;
  run    a folder of one federation (rounds.csv, clients.csv, drift.csv, inexactness.csv,
         config.json), or one of those files; a folder of such folders is several runs;
  lodo   a LODO runs.csv, a folder with one, or a folder of such folders (results/lodo).

Sweeps and runs become one ``Trials`` table (a run is a trial whose settings come from its
config.json), so the federated figures take either. Every file read goes through a
``Trace``, which keeps its sha256 for the figure's sidecar and the notes about what was
left out.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from fedhar.errors import DataFormatError, FedharError
from simulations.config import WHERE_FIELDS, FLConfig


class NothingToPlot(FedharError):
    """The inputs are well formed but hold nothing this figure can show."""


ROUND_COLUMNS = ("round", "clients_trained", "failed", "rejected", "train_loss", "accuracy", "macro_f1",
                 "acc_min", "acc_max", "bytes_up", "bytes_down")
OPTIONAL_ROUND_COLUMNS = ("server_accuracy", "server_macro_f1", "heldout_accuracy", "heldout_macro_f1")
SCORES = ("accuracy", "macro_f1", *OPTIONAL_ROUND_COLUMNS)
SWEEP_COLUMNS = ("trial_id", "status", "seconds", "node", "peak_rss_mb", "drift_mean", "inexactness_mean")
NUMERIC = (*[c for c in ROUND_COLUMNS], *OPTIONAL_ROUND_COLUMNS, "seconds", "peak_rss_mb", "drift_mean",
           "inexactness_mean", "rank", "local_epochs", "num_clients", "fraction_train", "seed")
LODO_NUMERIC = ("rank", "train_fraction", "seed", "epochs", "accuracy", "macro_f1", "macro_precision",
                "macro_recall", "trainable_params", "total_params", "frozen_bytes", "trainable_bytes",
                "state_bytes", "peak_mem_mb", "peak_rss_mb", "sec_per_epoch")
OK_STATUS = {"", "nan", "ok", "done", "finished", "success", "succeeded", "complete", "completed"}
# FLConfig fields that say where or how a run was executed rather than what it computed
# settings in the order labels name them
FIRST = ("strategy", "mode", "rank", "local_epochs", "num_clients", "fraction_train", "partition", "data")
NOT_A_SETTING = {"seed", "inject_failure", "round_timeout", *WHERE_FIELDS}  # seed: a repetition, not a setting


DATASET_NAMES = {"uci-har": "UCI-HAR", "hapt": "HAPT", "motionsense": "MotionSense", "hhar": "HHAR",
                 "realworld": "RealWorld", "pamap2": "PAMAP2", "usc-had": "USC-HAD"}


def data_label(names) -> str:
    """'synthetic data' or 'real data: UCI-HAR' (or both) for the datasets a figure shows."""
    from fedhar.options import split_names

    found = {n.split("-d")[0] if n.startswith("synthetic") else n
             for value in names if isinstance(value, str) for n in split_names(value)}
    real = sorted(DATASET_NAMES.get(n, n) for n in found if n != "synthetic")
    parts = (["synthetic data"] if "synthetic" in found else []) + (["real data: " + ", ".join(real)] if real else [])
    return " + ".join(parts) or "data not recorded"


def config_keys() -> tuple[str, ...]:
    """The settings of a federated run, snake_case (the FLConfig fields)."""
    return tuple(f.name for f in fields(FLConfig))


class Trace:
    """The input files a figure was drawn from (path, sha256, size) and notes on what it left out."""

    def __init__(self):
        self.inputs: dict[str, dict] = {}
        self.notes: list[str] = []

    def read(self, path: Path) -> bytes:
        data = Path(path).read_bytes()
        self.inputs.setdefault(str(path), {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(),
                                           "bytes": len(data)})
        return data

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)


def read_table(path: str | Path, trace: Trace, required=(), numeric=NUMERIC, purpose: str = "") -> pd.DataFrame:
    """A CSV table; DataFormatError naming the file (and column, and line) if it is unusable."""
    path = Path(path)
    why = f" (needed for {purpose})" if purpose else ""
    if not path.is_file():
        raise FedharError(f"{path}: no such file{why}")
    data = trace.read(path)
    try:
        df = pd.read_csv(io.BytesIO(data))
    except pd.errors.EmptyDataError:
        raise DataFormatError(path, "empty file; expected a CSV table with a header line") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataFormatError(path, f"not a readable CSV table: {first}") from None
    require_columns(df, path, required, purpose)
    for col in numeric:
        if col in df.columns:
            df[col] = _numeric(df[col], path, col)
    return df


def require_columns(df: pd.DataFrame, path: Path, columns, purpose: str = "") -> None:
    missing = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        why = f" (needed for {purpose})" if purpose else ""
        raise DataFormatError(path, f"missing required column{'s' if len(missing) > 1 else ''} {names}{why}; "
                                    f"its columns are: {', '.join(map(str, df.columns))}")


def _numeric(series: pd.Series, path: Path, col: str) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce")
    text = series.astype(str).str.strip()
    bad = series.notna() & values.isna() & (text != "") & (text.str.lower() != "nan")
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(path, f"column {col!r}: {series.iloc[pos]!r} is not a number", line=pos + 2)
    return values.astype(float)


def read_run_config(run_dir: Path, trace: Trace) -> dict | None:
    """config.json's settings, snake_case; None (and a note) if the run has none."""
    path = run_dir / "config.json"
    if not path.is_file():
        trace.note(f"{path}: no such file; the run's settings (strategy, rank, ...) are unknown")
        return None
    try:
        blob = json.loads(trace.read(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"not valid JSON: {e}") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict):
        raise DataFormatError(path, "expected an object with a 'config' object (the run's FLConfig)")
    return {str(k).replace("-", "_"): v for k, v in blob["config"].items()}


@dataclass
class Inputs:
    sweeps: list[Path] = field(default_factory=list)  # results.csv files
    runs: list[Path] = field(default_factory=list)  # run folders
    lodo: list[Path] = field(default_factory=list)  # runs.csv files

    @property
    def federated(self) -> bool:
        return bool(self.sweeps or self.runs)

    def describe(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in (("sweep table(s)", self.sweeps), ("run folder(s)", self.runs),
                                                 ("LODO table(s)", self.lodo)) if v]
        return ", ".join(parts) or "nothing"


RUN_FILES = ("rounds.csv", "clients.csv", "drift.csv", "inexactness.csv", "config.json")


def classify(paths) -> Inputs:
    """Sort input paths into sweeps, runs and LODO tables (see the module docstring)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found = Inputs()
    for p in map(Path, paths):
        if not p.exists():
            raise FedharError(f"{p}: no such file or directory")
        if p.is_dir():
            if (p / "results.csv").is_file():
                found.sweeps.append(p / "results.csv")
            elif (p / "runs.csv").is_file():
                found.lodo.append(p / "runs.csv")
            elif any((p / name).is_file() for name in RUN_FILES):
                found.runs.append(p)
            elif lodo := sorted(p.glob("*/runs.csv")):
                found.lodo += lodo
            elif runs := sorted(q.parent for q in p.glob("*/rounds.csv")):
                found.runs += runs
            else:
                raise FedharError(f"{p}: neither a sweep (results.csv), a run (rounds.csv, clients.csv, ...) "
                                  "nor a LODO folder (runs.csv)")
        elif p.name == "results.csv":
            found.sweeps.append(p)
        elif p.name == "runs.csv":
            found.lodo.append(p)
        elif p.name in RUN_FILES:
            found.runs.append(p.parent)
        else:
            head = p.read_text(errors="replace").splitlines()[:1]
            columns = set(head[0].split(",")) if head else set()
            if {"held_out", "mode"} <= columns:
                found.lodo.append(p)
            elif "trial_id" in columns:
                found.sweeps.append(p)
            else:
                raise FedharError(f"{p}: not a table fedhar plots (expected a sweep's results.csv with 'trial_id', "
                                  f"a LODO runs.csv with 'held_out' and 'mode', or a run's {', '.join(RUN_FILES)})")
    for kind in (found.sweeps, found.runs, found.lodo):
        kind[:] = list(dict.fromkeys(kind))
    return found


@dataclass
class Trials:
    """Federated trials, one row per (trial_id, round), settings as columns."""

    rounds: pd.DataFrame
    dirs: dict[str, Path]  # trial_id -> folder that may hold its drift.csv / inexactness.csv
    tables: dict[str, Path]  # trial_id -> the table its rows came from

    @property
    def ids(self) -> list[str]:
        return list(dict.fromkeys(self.rounds["trial_id"]))

    @property
    def settings(self) -> list[str]:
        """Columns that define a configuration (seeds and paths are not settings)."""
        keys = [c for c in config_keys() if c in self.rounds.columns and c not in NOT_A_SETTING]
        return sorted(keys, key=lambda c: (FIRST.index(c) if c in FIRST else len(FIRST), keys.index(c)))

    def where(self, filters: dict[str, str] | None) -> Trials:
        if not filters:
            return self
        df = self.rounds
        for key, value in filters.items():
            if key not in df.columns:
                raise FedharError(f"--where {key}={value}: no column {key!r} in {self.describe()}; "
                                  f"columns: {', '.join(df.columns)}")
            df = df[df[key].map(fmt) == fmt(_guess(value))]
        if df.empty:
            raise NothingToPlot(f"no trial in {self.describe()} has "
                                + " and ".join(f"{k}={v}" for k, v in filters.items()))
        ids = set(df["trial_id"])
        return Trials(df, {k: v for k, v in self.dirs.items() if k in ids},
                      {k: v for k, v in self.tables.items() if k in ids})

    def describe(self) -> str:
        return ", ".join(dict.fromkeys(str(p) for p in self.tables.values()))

    def summary(self) -> pd.DataFrame:
        """One row per trial: settings, seed, final-round accuracy / macro-F1, cumulative MB, peak RSS."""
        rows = []
        keep = [c for c in (*self.settings, "seed") if c in self.rounds.columns]
        for tid, g in self.rounds.groupby("trial_id", sort=False):
            g = g.sort_values("round")
            row = {"trial_id": tid, **{c: g[c].iloc[0] for c in keep}}
            scored = g.dropna(subset=["accuracy"]) if "accuracy" in g else g.iloc[0:0]
            row["final_round"] = (scored if len(scored) else g)["round"].iloc[-1]
            for m in SCORES:  # the last value of each (the server may evaluate only some rounds)
                values = g[m].dropna() if m in g else ()
                row[m] = values.iloc[-1] if len(values) else np.nan
            if {"bytes_up", "bytes_down"} <= set(g.columns):
                row["mb"] = float((g["bytes_up"].fillna(0) + g["bytes_down"].fillna(0)).sum()) / 1e6
            if "clients_trained" in g:
                row["clients_trained"] = g["clients_trained"].median()
            if "peak_rss_mb" in g:  # the sweep records MiB (ru_maxrss / 1024): MB = 10^6 bytes here
                row["peak_rss_mb"] = g["peak_rss_mb"].max() * 2**20 / 1e6
            rows.append(row)
        return pd.DataFrame(rows)


def load_trials(inputs: Inputs, trace: Trace, required=(), purpose: str = "") -> Trials:
    """Sweeps and run folders as one Trials table; trials that failed are left out (noted)."""
    keys = set(config_keys())
    setting_cols = [c for c in required if c in keys]
    table_cols = [c for c in required if c not in keys]
    frames, dirs, tables, read = [], {}, {}, []

    def add(df: pd.DataFrame, table: Path, dir_of) -> None:
        read.append(table)  # (named if none of them has a finished round)
        df = df.copy()
        original = df["trial_id"].astype(str)
        df["trial_id"] = original
        if set(original) & set(tables):  # the same ids in two sweeps: tell them apart
            df["trial_id"] = f"{table.parent.name}:" + original
        for old, new in dict(zip(original, df["trial_id"])).items():
            dirs[new], tables[new] = dir_of(old), table
        frames.append(df)

    for path in inputs.sweeps:
        df = read_table(path, trace, ("trial_id", "round", *setting_cols, *table_cols), purpose=purpose)
        add(_drop_failed(df, path, trace), path, lambda tid, base=path.parent: _trial_dir(base, tid))
    for run in inputs.runs:
        table = run / "rounds.csv"
        df = read_table(table, trace, ("round", *table_cols), purpose=purpose)
        config = read_run_config(run, trace)
        if config is None and setting_cols:
            raise FedharError(f"{run / 'config.json'}: no such file (needed for the run's "
                              f"{', '.join(setting_cols)})")
        for key in setting_cols:
            if key not in (config or {}):
                raise DataFormatError(run / "config.json", f"missing key 'config.{key.replace('_', '-')}'"
                                      + (f" (needed for {purpose})" if purpose else ""))
        for key, value in (config or {}).items():
            if key not in df.columns:
                df[key] = value
        df.insert(0, "trial_id", run.name or str(run))
        add(df, table, lambda tid, run=run: run)
    if not frames:
        raise NothingToPlot(f"no federated trials to plot{' for ' + purpose if purpose else ''}")
    rounds = pd.concat(frames, ignore_index=True)
    rounds = rounds[rounds["round"].notna()]
    if rounds.empty:
        raise NothingToPlot(f"no finished rounds in {', '.join(map(str, dict.fromkeys(read)))}")
    return Trials(rounds, dirs, tables)


def _trial_dir(sweep: Path, tid: str) -> Path:
    """A sweep trial's run folder: trials/<id> (the runner before Ray Tune) or
    tune/<experiment>/<id>/run (fedhar sweep on Ray Tune)."""
    found = sorted(sweep.glob(f"tune/*/{tid}/run"))
    return found[0] if found else sweep / "trials" / tid


def _drop_failed(df: pd.DataFrame, path: Path, trace: Trace) -> pd.DataFrame:
    if "status" not in df.columns:
        return df
    status = df["status"].astype(str).str.strip().str.lower()
    bad = ~status.isin(OK_STATUS)
    if bad.any():
        ids = sorted(set(df.loc[bad, "trial_id"].astype(str)))
        kinds = sorted(set(status[bad]))
        trace.note(f"{path}: left out {len(ids)} trial(s) with status {', '.join(kinds)}: {', '.join(ids)}")
    return df[~bad]


def load_lodo(paths: list[Path], trace: Trace, required=(), purpose: str = "",
              train_fraction: float | None = None) -> pd.DataFrame:
    """LODO runs.csv rows of one training share (0.7, the paper's, unless told or absent)."""
    frames = []
    for path in paths:
        df = read_table(path, trace, ("mode", "accuracy", *required), numeric=LODO_NUMERIC, purpose=purpose)
        df["source"] = str(path)
        frames.append(df)
    if not frames:
        raise NothingToPlot(f"no LODO runs.csv to plot{' for ' + purpose if purpose else ''}")
    rows = pd.concat(frames, ignore_index=True)
    if "held_out" not in rows.columns:
        trace.note(f"{', '.join(map(str, paths))}: no 'held_out' column; all rows count as one held-out set")
        rows["held_out"] = "held-out"
    if "train_fraction" in rows.columns and rows["train_fraction"].nunique() > 1:
        shares = sorted(rows["train_fraction"].dropna().unique())
        share = train_fraction if train_fraction is not None else (
            0.7 if any(np.isclose(shares, 0.7)) else rows["train_fraction"].mode().iloc[0])
        rows = rows[np.isclose(rows["train_fraction"], share)]
        trace.note(f"LODO: only rows with train_fraction {share:g} (of {', '.join(f'{s:g}' for s in shares)})")
    elif train_fraction is not None and "train_fraction" in rows.columns:
        rows = rows[np.isclose(rows["train_fraction"], train_fraction)]
    if rows.empty:
        raise NothingToPlot(f"no LODO rows with train_fraction {train_fraction:g}")
    return rows


def fmt(value) -> str:
    """A setting as text: 16.0 -> '16', nan -> '-'."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


def _guess(text: str):
    try:
        return float(text)
    except ValueError:
        return text


BARE = ("strategy", "mode", "partition", "data", "held_out")  # values that name themselves
SHORT = {"rank": "r{}", "local_epochs": "E={}", "num_clients": "K={}", "fraction_train": "frac={}",
         "lr": "lr={}", "batch_size": "bs={}", "seed": "seed {}", "rounds": "{} rounds"}


def label(row, columns) -> str:
    """'fedavg / r16 / qlora' for the given setting columns of a row."""
    parts = [SHORT.get(c, "{}").format(fmt(row[c])) if c in SHORT or c in BARE else f"{c}={fmt(row[c])}"
             for c in columns]
    return " / ".join(parts) if parts else "all trials"


def varying(df: pd.DataFrame, columns) -> list[str]:
    """The columns whose values differ between rows."""
    return [c for c in columns if c in df.columns and df[c].map(fmt).nunique() > 1]


def spread(df: pd.DataFrame, columns) -> str:
    """'rank ∈ {4, 16}, mode ∈ {lora, qlora}' for the columns that vary in df."""
    parts = []
    for c in varying(df, columns):
        values = sorted(set(df[c].map(fmt)), key=_sort_key)
        parts.append(f"{c} ∈ {{{', '.join(values)}}}")
    return ", ".join(parts)


def _sort_key(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
