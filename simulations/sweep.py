"""``fedhar sweep``: the sweep file (TOML) and the trial function Ray Tune runs.

A sweep file names the runs::

    [sweep]                     # optional
    name = "tiny"               # default: the file's stem; default output runs/sweeps/<name>
    cpus_per_trial = 1          # Ray CPUs of one trial; torch threads = int(cpus_per_trial)
    gpus_per_trial = 0
    max_concurrent = 0          # 0: as many trials at once as the Ray resources hold
    ray_address = ""            # "": a local Ray instance; else a cluster ("auto", "host:6379")
    num_samples = 1             # draws of [search] (each crossed with the whole [grid])
    algorithm = "random"        # how [search] is drawn: random | optuna (TPE)
    metric = "accuracy"         # a rounds.csv column, reported every round; what the search
    mode = "max"                #   algorithm and ASHA optimise, and what picks the best trial
    scheduler = "fifo"          # fifo (every trial runs all rounds) | asha (stops bad trials early)
    grace_rounds = 1            # asha: rounds every trial runs before it may be stopped
    seed = 0                    # seed of the search algorithm (the runs' seeds are FLConfig's seed)
    engine = "inline"           # a trial's engine: inline | cohort (LoRA clients in stacked groups)
    cohort_size = 32            # cohort: clients trained or evaluated together in one pass

    [base]                      # FLConfig values every trial shares (`fedhar fl --help`)
    rounds = 2
    synthetic-domains = 2       # hyphens or underscores, as you like

    [grid]                      # lists: every combination is run (tune.grid_search)
    strategy = ["fedavg", "ffa"]

    [search]                    # distributions, drawn num_samples times
    lr = { loguniform = [1e-4, 1e-2] }
    local_epochs = { choice = [1, 2] }

    [search.fedprox]            # a strategy's own hyperparameters: one Tune experiment per
    proximal_mu = { loguniform = [1e-3, 1.0] }   # strategy of the grid, each with the same budget

    [confirm]                   # optional: then re-run each experiment's best trial on these seeds
                                #   (tuned on validation subjects, [base] server_val_fraction > 0:
                                #   each seed is tuned and confirmed alone, Sweep.tunes_per_seed)
    seeds = [0, 1, 2]           #   with `set` applied (e.g. server_val_fraction = 0: the test
    set = { server_val_fraction = 0.0 }   # subjects), and compare every strategy with `baseline`
    baseline = "fedavg"         #   (paired t intervals over the seeds: simulations/sweep_confirm.py)
    metric = "server_accuracy"

Every key is checked against FLConfig (an unknown key, a value of the wrong type, a key in
two tables, a bound FLConfig refuses are errors naming the file, the key and its line).
``out_dir``, ``resume`` and ``overwrite`` belong to the sweep: each trial runs in
``<trial dir>/run`` and resumes from its own checkpoint when its trial is resumed.
Running, resuming and the results table: simulations/sweep_run.py.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import sys
import time
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

from fedhar.errors import FedharError
from simulations.config import FLConfig
from strategies.names import STRATEGY_NAMES

#: what the sweep sets for each trial itself
MANAGED = ("out_dir", "resume", "overwrite")
#: config columns results.csv always has, beside every field the sweep file sets
KEY_COLUMNS = ("data", "partition", "num_clients", "strategy", "mode", "rank", "local_epochs",
               "fraction_train", "seed", "rounds")
TRIAL_COLUMNS = ("seconds", "cpu_seconds", "node", "hostname", "node_ip", "peak_rss_mb", "clients", "resumed", "error")
CHECKPOINT = "checkpoint.pkl"  # simulations.rounds.CHECKPOINT (not imported: it pulls in Flower)
DEFAULT_ROOT = Path("runs") / "sweeps"
TABLES = ("sweep", "base", "grid", "search", "confirm")
DISTRIBUTIONS = ("loguniform", "uniform", "choice")
ALGORITHMS = ("random", "optuna")
SCHEDULERS = ("fifo", "asha")
TRIAL_ENGINES = ("inline", "cohort")  # in-process engines a Ray Tune trial can run


@dataclass(frozen=True)
class SweepSettings:
    name: str = "sweep"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many as the Ray resources allow
    ray_address: str = ""  # "": a local Ray instance
    num_samples: int = 1
    algorithm: str = "random"
    metric: str = "accuracy"
    mode: str = "max"
    scheduler: str = "fifo"
    grace_rounds: int = 1
    seed: int = 0
    engine: str = "inline"  # how a trial runs its federation: inline | cohort (simulations/cohort.py)
    cohort_size: int = 32  # cohort engine: clients trained or evaluated together


@dataclass(frozen=True)
class Distribution:
    """One [search] entry: ``kind`` (loguniform | uniform | choice) over ``values``."""

    kind: str
    values: tuple

    def tune(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        return getattr(tune, self.kind)(*self.values)

    def __str__(self) -> str:
        return f"{self.kind}{list(self.values)}"


@dataclass(frozen=True)
class Confirm:
    seeds: tuple = (0, 1, 2)
    set: dict = field(default_factory=dict)  # FLConfig values of the confirmation runs
    baseline: str = "fedavg"
    metric: str = "server_accuracy"


@dataclass(frozen=True)
class Experiment:
    """One Tune experiment of the sweep: its name, fixed values, grid and search space."""

    name: str  # "all", or the strategy of a per-strategy search
    base: dict
    grid: dict
    search: dict  # field -> Distribution

    def param_space(self) -> dict:
        from ray import tune

        return {**self.base, **{k: tune.grid_search(v) for k, v in self.grid.items()},
                **{k: d.tune() for k, d in self.search.items()}}

    def size(self, num_samples: int) -> int:
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n * (num_samples if self.search else 1)


@dataclass
class Sweep:
    path: Path
    text: str
    base: dict
    grid: dict[str, list]
    settings: SweepSettings
    search: dict = field(default_factory=dict)  # field -> Distribution, every trial
    per_strategy: dict = field(default_factory=dict)  # strategy -> {field -> Distribution}
    confirm: Confirm | None = None

    @property
    def tunes_per_seed(self) -> bool:
        """Tuning on validation subjects ahead of a [confirm] stage: every confirmation seed is
        tuned on its own validation subjects. A seed draws its test subjects, and its validation
        subjects from the rest (simulations/task.py), so a configuration selected at one seed
        would have been selected on subjects another confirmation seed tests on (the leak of
        the first fair comparison, results/sweeps/README.md). The tuning experiments therefore
        run each draw at every [confirm] seed, and the confirmation of seed s re-runs the best
        trial of seed s (sweep_confirm.select_best)."""
        return (self.confirm is not None and float(self.base.get("server_val_fraction", 0.0)) > 0
                and "seed" not in self.grid)

    def experiments(self) -> list[Experiment]:
        """One experiment; or, with per-strategy search tables, one per strategy (same budget each).
        With ``tunes_per_seed``, the [confirm] seeds are a grid of every experiment."""
        base, grid = dict(self.base), dict(self.grid)
        if self.tunes_per_seed:
            base.pop("seed", None)
            grid["seed"] = list(self.confirm.seeds)
        if not self.per_strategy:
            return [Experiment("all", base, grid, dict(self.search))]
        strategies = grid.get("strategy") or [base.get("strategy", FLConfig.strategy)]
        grid = {k: v for k, v in grid.items() if k != "strategy"}
        return [Experiment(s, {**base, "strategy": s}, grid, {**self.search, **self.per_strategy.get(s, {})})
                for s in strategies]

    def config_columns(self) -> list[str]:
        wanted = set(KEY_COLUMNS) | set(self.base) | set(self.grid) | set(self.search)
        for space in self.per_strategy.values():
            wanted |= set(space)
        if self.confirm:
            wanted |= set(self.confirm.set)
        return [f.name for f in fields(FLConfig) if f.name in wanted and f.name not in MANAGED]

    def default_dir(self) -> Path:
        return DEFAULT_ROOT / self.settings.name


# --------------------------------------------------------------------------- the file


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _line_of(text: str, table: str, key: str) -> int | None:
    """1-based line of ``key = ...`` inside ``[table]`` (best effort: tomllib gives no lines)."""
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).strip().strip("\"'")
        elif current == table and re.match(rf"""\s*["']?{re.escape(key)}["']?\s*=""", line):
            return number
        elif current is None and table == "" and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
        if header and table == "" and current == key:  # the table [key] itself
            return number
        if header and table == "" and current.startswith(key + "."):  # a sub-table [key.x]
            return number
    return None


def _where(path: Path, text: str, table: str, key: str) -> str:
    line = _line_of(text, table, key)
    return f"{path}:{line}" if line else str(path)


def _field_kind(f) -> type | None:
    if f.default is not MISSING:
        return type(f.default)
    if f.default_factory is not MISSING:
        return type(f.default_factory())
    return None


def _coerce(value, kind: type | None):
    """``value`` as ``kind`` (int is a float; bool is no number), else raise TypeError."""
    if kind is None:
        return value
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise TypeError(kind.__name__)
    return kind(value)


def _unknown(path, text, table, key, known: list[str]) -> FedharError:
    close = difflib.get_close_matches(_flag(key), [_flag(k) for k in known], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(_flag(k) for k in known)
    return FedharError(f"{_where(path, text, table, key)}: unknown key {key!r} in [{table}]{hint}; known: {listed}")


class _Reader:
    """Checks a parsed sweep file's tables; every error names the file, key and line."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text
        self.known = {f.name: f for f in fields(FLConfig) if f.name not in MANAGED}

    def where(self, table: str, key: str) -> str:
        return _where(self.path, self.text, table, key)

    def fl_key(self, table: str, key: str) -> str:
        name = key.replace("-", "_")
        if name in MANAGED:
            raise FedharError(f"{self.where(table, key)}: {key!r} in [{table}]: the sweep sets it for each "
                              f"trial (out-dir = <trial dir>/run; resume when its trial resumes)")
        if name not in self.known:
            raise _unknown(self.path, self.text, table, key, sorted(self.known))
        return name

    def value(self, table: str, key: str, name: str, value):
        try:
            return _coerce(value, _field_kind(self.known[name]))
        except TypeError as exc:
            raise FedharError(f"{self.where(table, key)}: [{table}] {key} = {value!r}: expected {exc}") from None

    def fl_table(self, table: str, doc: dict) -> dict:
        out = {}
        for key, value in doc.items():
            name = self.fl_key(table, key)
            if name in out:
                raise FedharError(f"{self.where(table, key)}: {key!r} is in [{table}] twice")
            out[name] = self.value(table, key, name, value)
        return out

    def grid(self, doc: dict, base: dict) -> dict:
        grid = {}
        for key, values in doc.items():
            name = self.fl_key("grid", key)
            where = self.where("grid", key)
            if name in base:
                raise FedharError(f"{where}: {key!r} is in both [base] and [grid]; keep one")
            if name in grid:
                raise FedharError(f"{where}: {key!r} is in [grid] twice (as {_flag(name)} and {name})")
            if not isinstance(values, list) or not values:
                raise FedharError(f"{where}: [grid] {key} must be a non-empty list, e.g. {key} = [{values!r}]"
                                  if not isinstance(values, list) else f"{where}: [grid] {key} is an empty list")
            try:
                coerced = [_coerce(v, _field_kind(self.known[name])) for v in values]
            except TypeError as exc:
                raise FedharError(f"{where}: [grid] {key} = {values!r}: expected a list of {exc}") from None
            if len(set(map(repr, coerced))) < len(coerced):
                raise FedharError(f"{where}: [grid] {key} = {values!r} lists a value twice")
            grid[name] = coerced
        return grid

    def space(self, table: str, doc: dict, taken: dict) -> dict:
        """A [search] table: field -> Distribution, each checked against FLConfig at its bounds."""
        out = {}
        for key, spec in doc.items():
            name = self.fl_key(table, key)
            where = self.where(table, key)
            if name in taken:
                raise FedharError(f"{where}: {key!r} is in [{table}] and in [{taken[name]}]; keep one")
            example = "{ loguniform = [1e-4, 1e-2] }, { uniform = [0.0, 0.9] } or { choice = [1, 2] }"
            if not isinstance(spec, dict) or len(spec) != 1:
                raise FedharError(f"{where}: [{table}] {key} must be one distribution, e.g. {key} = {example}")
            (kind, values), = spec.items()
            if kind not in DISTRIBUTIONS:
                close = difflib.get_close_matches(kind, DISTRIBUTIONS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise FedharError(f"{where}: [{table}] {key}: unknown distribution {kind!r}{hint}; "
                                  f"known: {', '.join(DISTRIBUTIONS)}")
            if not isinstance(values, list) or not values:
                raise FedharError(f"{where}: [{table}] {key}: {kind} needs a non-empty list, e.g. {key} = {example}")
            field_type = _field_kind(self.known[name])
            if kind == "choice":
                try:
                    values = [_coerce(v, field_type) for v in values]
                except TypeError as exc:
                    raise FedharError(f"{where}: [{table}] {key} = {spec!r}: expected a list of {exc}") from None
                if len(set(map(repr, values))) < len(values):
                    raise FedharError(f"{where}: [{table}] {key}: choice lists a value twice")
            else:
                if field_type is not float:
                    raise FedharError(f"{where}: [{table}] {key} is {field_type.__name__ if field_type else '?'}: "
                                      f"use {{ choice = [...] }} ({kind} draws real numbers)")
                if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    raise FedharError(f"{where}: [{table}] {key}: {kind} needs [low, high], got {values!r}")
                values = [float(v) for v in values]
                if not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
                    raise FedharError(f"{where}: [{table}] {key}: {kind} needs low < high"
                                      + (" and low > 0" if kind == "loguniform" else "") + f", got {values!r}")
            out[name] = Distribution(kind, tuple(values))
        return out

    def check_values(self, table: str, base: dict, space: dict) -> None:
        """Every bound / choice of ``space`` must make a valid FLConfig with ``base``."""
        for name, dist in space.items():
            for v in dist.values:
                try:
                    FLConfig(**{**base, name: v})
                except (FedharError, ValueError, TypeError) as exc:
                    raise FedharError(f"{self.where(table, name)}: [{table}] {name} = {dist}: "
                                      f"{v!r} is not a valid value: {exc}") from None

    def settings(self, doc: dict) -> SweepSettings:
        known = {f.name: f for f in fields(SweepSettings)}
        out = {"name": self.path.stem}
        for key, value in doc.items():
            name = key.replace("-", "_")
            if name not in known:
                raise _unknown(self.path, self.text, "sweep", key, sorted(known))
            try:
                out[name] = _coerce(value, _field_kind(known[name]))
            except TypeError as exc:
                raise FedharError(f"{self.where('sweep', key)}: [sweep] {key} = {value!r}: expected {exc}") from None
        s = SweepSettings(**out)
        if not s.name or not re.fullmatch(r"[\w.+-]+", s.name):
            raise FedharError(f"{self.where('sweep', 'name')}: [sweep] name {s.name!r}: "
                              "letters, digits, '.', '_', '+', '-' only (it names a folder)")
        if s.cpus_per_trial <= 0 or s.gpus_per_trial < 0 or s.max_concurrent < 0:
            raise FedharError(f"{self.path}: [sweep] needs cpus_per_trial > 0, gpus_per_trial >= 0, max_concurrent >= 0")
        for key, value, allowed in (("algorithm", s.algorithm, ALGORITHMS), ("scheduler", s.scheduler, SCHEDULERS),
                                    ("mode", s.mode, ("max", "min")), ("engine", s.engine, TRIAL_ENGINES)):
            if value not in allowed:
                raise FedharError(f"{self.where('sweep', key)}: [sweep] {key} = {value!r}: one of {', '.join(allowed)}")
        for key in ("num_samples", "grace_rounds", "cohort_size"):
            if getattr(s, key) < 1:
                raise FedharError(f"{self.where('sweep', key)}: [sweep] {key} must be >= 1, got {getattr(s, key)}")
        if s.seed < 0:
            raise FedharError(f"{self.where('sweep', 'seed')}: [sweep] seed must be >= 0, got {s.seed}")
        return s

    def confirm(self, doc: dict, strategies: list[str]) -> Confirm:
        known = {f.name for f in fields(Confirm)}
        values = {}
        for key, value in doc.items():
            if key not in known:
                raise _unknown(self.path, self.text, "confirm", key, sorted(known))
            values[key] = value
        seeds = values.get("seeds", list(Confirm.seeds))
        if (not isinstance(seeds, list) or len(seeds) < 2 or len(set(seeds)) < len(seeds)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            raise FedharError(f"{self.where('confirm', 'seeds')}: [confirm] seeds must list 2 or more distinct "
                              f"seeds >= 0 (paired intervals need n >= 2), got {seeds!r}")
        overrides = values.get("set", {})
        if not isinstance(overrides, dict):
            raise FedharError(f"{self.where('confirm', 'set')}: [confirm] set must be a table, e.g. "
                              "set = { server_val_fraction = 0.0 }")
        overrides = {self.fl_key("confirm", k): self.value("confirm", k, self.fl_key("confirm", k), v)
                     for k, v in overrides.items()}
        if "seed" in overrides:
            raise FedharError(f"{self.where('confirm', 'set')}: [confirm] set: the seeds are [confirm] seeds")
        baseline = values.get("baseline", Confirm.baseline)
        if baseline not in strategies:
            raise FedharError(f"{self.where('confirm', 'baseline')}: [confirm] baseline {baseline!r} is not a "
                              f"strategy of the sweep ({', '.join(strategies)})")
        metric = values.get("metric", Confirm.metric)
        if not isinstance(metric, str) or not metric:
            raise FedharError(f"{self.where('confirm', 'metric')}: [confirm] metric must name a rounds.csv column")
        return Confirm(tuple(seeds), overrides, baseline, metric)


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every error names the file, the key and its line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FedharError(f"{path}: cannot read the sweep file ({exc.strerror or exc})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FedharError(f"{path}: not a valid TOML file: {exc}") from None
    tables = ", ".join(f"[{t}]" for t in TABLES)
    for key, value in doc.items():
        if key not in TABLES:
            what = f"table [{key}]" if isinstance(value, dict) else f"key {key!r}"
            close = difflib.get_close_matches(key, TABLES, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise FedharError(f"{_where(path, text, '', key)}: unknown {what}{hint}; a sweep file has the tables {tables}")
        if not isinstance(value, dict):
            raise FedharError(f"{_where(path, text, '', key)}: {key!r} must be a table: write [{key}] on a line of its own")
    r = _Reader(path, text)
    base = r.fl_table("base", doc.get("base", {}))
    grid = r.grid(doc.get("grid", {}), base)
    taken = {**{k: "base" for k in base}, **{k: "grid" for k in grid}}
    raw = doc.get("search", {})
    search = r.space("search", {k: v for k, v in raw.items() if k not in STRATEGY_NAMES}, taken)
    per_strategy = {}
    strategies = grid.get("strategy") or [base.get("strategy", FLConfig.strategy)]
    for name, table in ((k, v) for k, v in raw.items() if k in STRATEGY_NAMES):
        where = _where(path, text, "", f"search.{name}")  # the table's header line
        if not isinstance(table, dict):
            raise FedharError(f"{r.where('search', name)}: [search] {name} names a strategy: write its own "
                              f"hyperparameters as a table [search.{name}]")
        if name not in strategies:
            raise FedharError(f"{where}: [search.{name}]: {name} is not a strategy of the sweep "
                              f"({', '.join(strategies)}); list it in [grid] strategy")
        per_strategy[name] = r.space(f"search.{name}", table, {**taken, **{k: "search" for k in search}})
    settings = r.settings(doc.get("sweep", {}))
    if settings.algorithm == "optuna" and grid and not (per_strategy and set(grid) == {"strategy"}):
        raise FedharError(f"{r.where('sweep', 'algorithm')}: algorithm = 'optuna' draws every value itself: "
                          f"move [grid] {', '.join(k for k in grid if k != 'strategy')} to [base] or to "
                          "[search] as { choice = [...] }")
    confirm = r.confirm(doc["confirm"], strategies) if "confirm" in doc else None
    sweep = Sweep(path, text, base, grid, settings, search, per_strategy, confirm)
    for exp in sweep.experiments():  # every grid value and every bound makes a valid run
        for name, values in exp.grid.items():
            for v in values:
                try:
                    FLConfig(**{**exp.base, name: v})
                except (FedharError, ValueError, TypeError) as exc:
                    raise FedharError(f"{r.where('grid', name)}: the trial {_flag(name)}={v!r} is not a valid run: "
                                      f"{exc}") from None
        r.check_values("search" if not per_strategy else f"search.{exp.name}", exp.base, exp.search)
        try:
            FLConfig(**exp.base)
        except (FedharError, ValueError, TypeError) as exc:
            raise FedharError(f"{path}: [base] is not a valid run: {exc}") from None
    if confirm:
        try:
            FLConfig(**{**base, **confirm.set})
        except (FedharError, ValueError, TypeError) as exc:
            raise FedharError(f"{r.where('confirm', 'set')}: [confirm] set does not make a valid run: {exc}") from None
    return sweep


# --------------------------------------------------------------------------- the trial


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _node() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # outside Ray (a direct call)
        return ""


def _completed_rounds(out: Path, rounds: int) -> list[dict] | None:
    """The rows of a run in ``out`` that finished all its rounds, else None."""
    import pandas as pd

    try:
        table = pd.read_csv(out / "rounds.csv")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    return table.to_dict("records") if len(table) >= rounds else None


def _clean(row: dict) -> dict:
    """JSON-friendly numbers (NaN stays NaN: Tune writes it as NaN)."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "item"):
            value = value.item()
        out[key] = value
    return out


def trial(config: dict, *, out_root: str, cwd: str = "", threads: int = 1, report=None,
          engine: str = "inline", cohort_size: int = 32) -> None:
    """One trial, the function Ray Tune runs: the federation of ``config`` (FLConfig fields)
    with the inline (or cohort) engine, each round's rounds.csv row reported to Tune with the trial's
    costs and place. The run lives in ``<out_root>/<trial id>/run``: a resumed trial
    continues from its checkpoint; a trial whose run finished re-reports its rows only."""
    logs = None
    if report is None:
        from ray import tune

        report = tune.report
        trial_id = tune.get_context().get_trial_id()
        logs = Path.cwd()  # Tune's working dir of the trial, where log_to_file writes stdout / stderr
    else:  # a direct call (tests)
        trial_id = "direct"
    try:
        _trial(config, Path(out_root) / trial_id, cwd, threads, report, engine, cohort_size)
    finally:
        if logs is not None:
            _keep_logs(logs, Path(out_root) / trial_id)


def _keep_logs(workdir: Path, trial_dir: Path) -> None:
    """Copy the trial's stdout / stderr (Tune's log_to_file) beside its results: Tune syncs a
    trial's working dir to storage only now and then, never at its end."""
    import shutil

    sys.stdout.flush()
    sys.stderr.flush()
    for name in ("stdout", "stderr"):
        src = workdir / name
        if src.is_file() and src.resolve() != (trial_dir / name).resolve():
            trial_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, trial_dir / name)


def _trial(config: dict, trial_dir: Path, cwd: str, threads: int, report, engine: str = "inline",
           cohort_size: int = 32) -> None:
    import torch

    t0 = time.perf_counter()
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative data / backbone paths are the driver's
    torch.set_num_threads(max(1, threads))
    values = config.get("fl", config)  # confirmation trials carry their configuration as one value
    cfg = FLConfig(**values)
    out = trial_dir / "run"
    out.mkdir(parents=True, exist_ok=True)
    done = _completed_rounds(out, cfg.rounds)
    resumed = done is None and (out / CHECKPOINT).exists()
    cfg = replace(cfg, out_dir=str(out), resume=resumed, overwrite=not resumed)
    place = {"node": _node(), "hostname": socket.gethostname(), "resumed": resumed or done is not None}

    def send(row: dict, seconds: float | None = None) -> None:
        try:
            import json

            clients = len(json.loads((out / "config.json").read_text())["clients"])
        except (OSError, ValueError, KeyError):
            clients = None
        report({**_clean(row), "round_seconds": seconds, "seconds": round(time.perf_counter() - t0, 1),
                "cpu_seconds": round(_cpu_seconds(), 1), "peak_rss_mb": round(_peak_rss_mb(), 1),
                "clients": clients, **place})

    if done is not None:  # finished before an interruption Tune did not record: nothing to run
        for row in done:
            send(row)
        return
    from simulations.run import run_inprocess
    from simulations.tracking import round_listener

    with round_listener(send):
        run_inprocess(cfg, engine=engine, cohort_size=cohort_size)
