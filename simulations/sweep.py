"""``fedhar sweep``: a grid of federated runs as Ray tasks, resumable, into one tidy table.

A sweep file (TOML) names the runs::

    [sweep]                     # optional
    name = "tiny"               # default: the file's stem; default output runs/sweeps/<name>
    cpus_per_trial = 1          # Ray CPUs of one trial; torch threads = int(cpus_per_trial)
    gpus_per_trial = 0
    max_concurrent = 0          # 0: as many trials at once as the Ray resources hold
    ray_address = ""            # "": a local Ray instance; else a cluster ("auto", "host:6379")

    [base]                      # FLConfig values every trial shares (`fedhar fl --help`)
    rounds = 2
    synthetic-domains = 2       # hyphens or underscores, as you like

    [grid]                      # lists: one trial per combination (cartesian product)
    strategy = ["fedavg", "ffa"]
    rank = [4, 16]

Every key is checked against FLConfig (an unknown key, a value of the wrong type, a key
in both [base] and [grid] are errors naming the file, the key and its line). ``out_dir``
and ``resume`` belong to the sweep: each trial runs in ``<sweep dir>/trials/<trial id>``,
where the trial id is a short hash of the trial's resolved configuration (the fields that
differ from FLConfig's defaults), so the same run is recognised however it was written
and whichever sweep file asked for it.

Each trial is one Ray task (``num_cpus=cpus_per_trial``, a fresh worker process per trial
so that its peak RSS is its own) that runs the federation with the in-process sequential
engine (``run_inprocess(cfg, engine="inline")``: Flower's Ray engine cannot run inside a
Ray task). Concurrency is what the Ray resources allow, so nothing is oversubscribed.

Resuming: a trial with a ``trial.json`` marker of status ok and a rounds.csv of all its
rounds is skipped; a trial killed half-way continues from its ``checkpoint.pkl``; a failed
trial runs again. A trial's own output (the federation's log, a failure's traceback) is in
``trials/<id>/trial.log``.

``<sweep dir>/results.csv``, rewritten after every trial, one row per (trial, round):
  trial_id, status            ok | failed
  config columns              KEY_COLUMNS, and every field the file's [base] or [grid] sets
  round and the round metrics whatever the trial's rounds.csv has (train_loss, accuracy,
                              macro_f1, bytes_up, ...); a failed trial is one row, round empty
  seconds, cpu_seconds        the trial's wall time (of its last run, when resumed) and its
                              worker process's CPU time; peak_rss_mb: that process's peak RSS
  node, hostname, node_ip     where it ran (node: the Ray node id)
  clients, resumed, error     how many clients the federation had; whether it continued
                              from a checkpoint; the failure, "Type: message"
``<sweep dir>/sweep.json`` keeps the sweep file's text, the command and earlier commands.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import itertools
import json
import os
import re
import socket
import sys
import time
import tomllib
import traceback
import warnings
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

import pandas as pd

from fedhar.console import progress, say
from fedhar.errors import FedharError
from simulations.config import FLConfig

#: what the sweep sets for each trial itself
MANAGED = ("out_dir", "resume", "overwrite")
#: config columns results.csv always has, beside every field the sweep file sets
KEY_COLUMNS = ("data", "partition", "num_clients", "strategy", "mode", "rank", "local_epochs",
               "fraction_train", "seed", "rounds")
TRIAL_COLUMNS = ("seconds", "cpu_seconds", "node", "hostname", "node_ip", "peak_rss_mb", "clients", "resumed", "error")
MARKER = "trial.json"
CHECKPOINT = "checkpoint.pkl"  # simulations.rounds.CHECKPOINT (not imported: it pulls in Flower)
DEFAULT_ROOT = Path("runs") / "sweeps"
TABLES = ("sweep", "base", "grid")


@dataclass(frozen=True)
class SweepSettings:
    name: str = "sweep"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many as the Ray resources allow
    ray_address: str = ""  # "": a local Ray instance


@dataclass(frozen=True)
class Trial:
    trial_id: str
    cfg: FLConfig  # out_dir = <sweep dir>/trials/<trial_id>
    values: dict  # this trial's grid values

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values.items()) or "(base)"


@dataclass
class Sweep:
    path: Path
    text: str
    base: dict
    grid: dict[str, list]
    settings: SweepSettings

    def trials(self, sweep_dir: Path) -> list[Trial]:
        """The cartesian product of the grid over the base, one trial per distinct config."""
        sweep_dir = Path(sweep_dir).resolve()
        names = list(self.grid)
        out, seen = [], set()
        for combo in itertools.product(*(self.grid[n] for n in names)):
            values = dict(zip(names, combo))
            try:
                cfg = FLConfig(**self.base, **values)
            except (FedharError, ValueError, TypeError) as exc:
                described = ", ".join(f"{_flag(k)}={v!r}" for k, v in values.items())
                raise FedharError(f"{self.path}: the trial {described or 'of [base]'} is not a valid run: {exc}") from None
            tid = trial_id(cfg)
            if tid not in seen:
                seen.add(tid)
                out.append(Trial(tid, replace(cfg, out_dir=str(sweep_dir / "trials" / tid)), values))
        return out

    def config_columns(self) -> list[str]:
        wanted = set(KEY_COLUMNS) | set(self.base) | set(self.grid)
        return [f.name for f in fields(FLConfig) if f.name in wanted and f.name not in MANAGED]

    def default_dir(self) -> Path:
        return DEFAULT_ROOT / self.settings.name


@dataclass
class SweepOutcome:
    sweep_dir: Path
    trials: int
    skipped: int  # already done before this invocation
    ran: int
    ok: int
    failed: int
    results: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    @property
    def results_csv(self) -> Path:
        return self.sweep_dir / "results.csv"


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
    for key, value in doc.items():
        if key not in TABLES:
            raise FedharError(f"{_where(path, text, '', key)}: "
                              f"unknown {'table [' + key + ']' if isinstance(value, dict) else 'key ' + repr(key)}; "
                              f"a sweep file has the tables [sweep], [base] and [grid]")
        if not isinstance(value, dict):
            raise FedharError(f"{_where(path, text, '', key)}: {key!r} must be a table: write [{key}] on a line of its own")

    known = {f.name: f for f in fields(FLConfig) if f.name not in MANAGED}
    fl_names = sorted(known)

    def fl_key(table: str, key: str) -> str:
        name = key.replace("-", "_")
        if name in MANAGED:
            raise FedharError(f"{_where(path, text, table, key)}: {key!r} in [{table}]: the sweep sets it for each "
                              f"trial (out-dir = <sweep dir>/trials/<trial id>; resume when a checkpoint is there)")
        if name not in known:
            raise _unknown(path, text, table, key, fl_names)
        return name

    base = {}
    for key, value in doc.get("base", {}).items():
        name = fl_key("base", key)
        try:
            base[name] = _coerce(value, _field_kind(known[name]))
        except TypeError as exc:
            raise FedharError(f"{_where(path, text, 'base', key)}: [base] {key} = {value!r}: expected {exc}") from None

    grid = {}
    for key, values in doc.get("grid", {}).items():
        name = fl_key("grid", key)
        where = _where(path, text, "grid", key)
        if name in base:
            raise FedharError(f"{where}: {key!r} is in both [base] and [grid]; keep one")
        if name in grid:
            raise FedharError(f"{where}: {key!r} is in [grid] twice (as {_flag(name)} and {name})")
        if not isinstance(values, list) or not values:
            raise FedharError(f"{where}: [grid] {key} must be a non-empty list, e.g. {key} = [{values!r}]"
                              if not isinstance(values, list) else f"{where}: [grid] {key} is an empty list")
        try:
            coerced = [_coerce(v, _field_kind(known[name])) for v in values]
        except TypeError as exc:
            raise FedharError(f"{where}: [grid] {key} = {values!r}: expected a list of {exc}") from None
        if len(set(map(repr, coerced))) < len(coerced):
            raise FedharError(f"{where}: [grid] {key} = {values!r} lists a value twice")
        grid[name] = coerced

    settings_known = {f.name: f for f in fields(SweepSettings)}
    settings = {"name": path.stem}
    for key, value in doc.get("sweep", {}).items():
        name = key.replace("-", "_")
        if name not in settings_known:
            raise _unknown(path, text, "sweep", key, sorted(settings_known))
        try:
            settings[name] = _coerce(value, _field_kind(settings_known[name]))
        except TypeError as exc:
            raise FedharError(f"{_where(path, text, 'sweep', key)}: [sweep] {key} = {value!r}: expected {exc}") from None
    settings = SweepSettings(**settings)
    if not settings.name or not re.fullmatch(r"[\w.+-]+", settings.name):
        raise FedharError(f"{_where(path, text, 'sweep', 'name')}: [sweep] name {settings.name!r}: "
                          "letters, digits, '.', '_', '+', '-' only (it names a folder)")
    if settings.cpus_per_trial <= 0 or settings.gpus_per_trial < 0 or settings.max_concurrent < 0:
        raise FedharError(f"{path}: [sweep] needs cpus_per_trial > 0, gpus_per_trial >= 0, max_concurrent >= 0")
    return Sweep(path, text, base, grid, settings)


def trial_id(cfg: FLConfig) -> str:
    """Short stable hash of the resolved config: the fields that differ from their defaults
    (so a field added to FLConfig later leaves existing ids alone), out_dir/resume aside."""
    resolved = {}
    for f in fields(FLConfig):
        value = getattr(cfg, f.name)
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if f.name not in MANAGED and value != default:
            resolved[f.name] = value
    key = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- trial state


def read_marker(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def rounds_done(out_dir: Path) -> int:
    try:
        return len(pd.read_csv(out_dir / "rounds.csv"))
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return 0


def trial_state(trial: Trial) -> str:
    """done (skipped on re-run) | partial (resumes from its checkpoint) | failed | pending."""
    marker = read_marker(trial.out_dir)
    if marker and marker.get("status") == "ok" and rounds_done(trial.out_dir) == trial.cfg.rounds:
        return "done"
    if (trial.out_dir / CHECKPOINT).exists():
        return "partial"
    if marker and marker.get("status") == "failed":
        return "failed"
    return "pending"


# --------------------------------------------------------------------------- the Ray task


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    with open(path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        try:
            yield
        finally:
            log.flush()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def _backbone_lock():
    """One pretraining at a time on this node: trials that share a backbone wait for the
    first to finish it and then reuse it, instead of writing the same cache files at once."""
    from fedhar.data.paths import cache_root

    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / "backbones.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _where_am_i() -> dict:
    place = {"hostname": socket.gethostname(), "pid": os.getpid(), "node": "", "node_ip": ""}
    try:
        import ray

        if ray.is_initialized():
            place["node"] = ray.get_runtime_context().get_node_id()
            place["node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # outside Ray (a direct call): hostname and pid only
        pass
    return place


def run_trial(cfg: FLConfig, threads: int = 1, cwd: str = "") -> dict:
    """One trial, in this process (the body of the Ray task): the federation, its output in
    ``out_dir/trial.log``; returns a summary (never raises for a failed run). ``cwd``: the
    driver's working directory (./data is on the data search path), where this node has it."""
    import torch

    t0, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S")
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(max(1, threads))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resumed = (out / CHECKPOINT).exists()
    cfg = replace(cfg, resume=resumed, overwrite=not resumed)  # the sweep owns its trial dirs
    status, error = "ok", ""
    with _output_to(out / "trial.log"):
        print(f"\n=== trial {out.name} started {started} (resume={resumed}) ===", flush=True)
        try:
            from simulations.run import run_inprocess
            from simulations.task import ensure_backbone

            if not cfg.backbone:
                with _backbone_lock():
                    ensure_backbone(cfg)
            run_inprocess(cfg, engine="inline")
        except Exception as exc:  # the trial failed; the sweep goes on
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    # cpu_seconds and peak_rss_mb are the worker process's (one per trial: Ray's max_calls=1),
    # start-up and imports included; seconds is the trial's wall time
    summary = {"status": status, "error": error, "started": started, "seconds": round(time.perf_counter() - t0, 1),
               "cpu_seconds": round(_cpu_seconds(), 1), "peak_rss_mb": round(_peak_rss_mb(), 1),
               "resumed": resumed, "threads": torch.get_num_threads(), **_where_am_i()}
    try:
        summary["clients"] = len(json.loads((out / "config.json").read_text())["clients"])
    except (OSError, ValueError, KeyError):
        summary["clients"] = None
    try:  # travels back: the driver may not share this node's disk
        summary["rounds_csv"] = (out / "rounds.csv").read_text() if status == "ok" else ""
    except OSError:
        summary["rounds_csv"] = ""
    return summary


# --------------------------------------------------------------------------- the driver


def _ray_env() -> dict:
    env = {"FLWR_TELEMETRY_ENABLED": "0"}
    for name in ("FEDHAR_CACHE_DIR", "FEDHAR_DATA_DIR"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@contextlib.contextmanager
def _ray_session(address: str):
    import logging

    import ray

    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                   runtime_env={"env_vars": _ray_env()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator env vars
        if address:
            ray.init(address=address, **options)
        else:  # "local": never attach to a cluster someone else started on this machine
            ray.init(address="local", num_cpus=os.cpu_count() or 1, object_store_memory=200 * 2**20, **options)
    try:
        yield ray
    finally:
        ray.shutdown()


def capacity(resources: dict, settings: SweepSettings) -> int:
    """How many trials the Ray resources hold at once."""
    slots = [int(resources.get("CPU", 0) / settings.cpus_per_trial + 1e-9)]
    if settings.gpus_per_trial > 0:
        slots.append(int(resources.get("GPU", 0) / settings.gpus_per_trial + 1e-9))
    return min(slots)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _progress(trial: Trial, summary: dict, total: int, done: int, failed: int, running: int, remaining: int,
              eta: float) -> str:
    where = summary.get("hostname") or "?"
    if summary.get("node"):
        where += f" ({summary.get('node_ip')}, node {summary['node'][:8]})"
    outcome = "ok    " if summary["status"] == "ok" else "FAILED"
    return (f"[{done + failed}/{total}] {outcome} {trial.trial_id} {trial.label()}: {summary['seconds']:.0f} s on {where}"
            + (f" - {summary['error']}" if summary["status"] != "ok" else "")
            + f" | done {done}, running {running}, failed {failed}, remaining {remaining}"
            + (f", ETA {_minutes(eta)}" if running + remaining else ""))


def write_marker(trial: Trial, summary: dict) -> None:
    trial.out_dir.mkdir(parents=True, exist_ok=True)
    if summary.get("rounds_csv") and not (trial.out_dir / "rounds.csv").exists():
        (trial.out_dir / "rounds.csv").write_text(summary["rounds_csv"])  # ran on a node without this disk
    marker = {"trial_id": trial.trial_id, "values": trial.values, "config": trial.cfg.to_run_config(),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
              **{k: v for k, v in summary.items() if k != "rounds_csv"}}
    tmp = trial.out_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1, default=str))
    os.replace(tmp, trial.out_dir / MARKER)


def results_table(sweep: Sweep, trials: list[Trial]) -> pd.DataFrame:
    """One row per (trial, round) of every trial with a marker; a failed trial is one row."""
    config_columns = sweep.config_columns()
    rows, integers = [], {"clients"}
    for trial in trials:
        marker = read_marker(trial.out_dir)
        if marker is None:
            continue
        head = {"trial_id": trial.trial_id, "status": marker.get("status", "")}
        head.update({c: getattr(trial.cfg, c) for c in config_columns})
        tail = {c: marker.get(c) for c in TRIAL_COLUMNS}
        try:
            table = pd.read_csv(trial.out_dir / "rounds.csv") if head["status"] == "ok" else pd.DataFrame()
        except (OSError, ValueError, pd.errors.EmptyDataError):
            table = pd.DataFrame()
        integers |= {c for c in table.columns if pd.api.types.is_integer_dtype(table[c])}
        rounds = table.to_dict("records")
        for r in rounds or [{"round": None}]:
            rows.append({**head, **r, **tail})
    df = pd.DataFrame(rows)
    if len(df):  # trial-level columns last, whatever metrics rounds.csv has
        df = df[[c for c in df.columns if c not in TRIAL_COLUMNS] + list(TRIAL_COLUMNS)]
        for column in integers & set(df.columns):  # a failed trial's empty cells keep them integers
            df[column] = df[column].astype("Int64")
    return df


def write_results(sweep: Sweep, trials: list[Trial], sweep_dir: Path) -> pd.DataFrame:
    df = results_table(sweep, trials)
    tmp = sweep_dir / "results.csv.tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, sweep_dir / "results.csv")
    return df


def _write_sweep_json(sweep: Sweep, sweep_dir: Path, trials: list[Trial], command: str) -> None:
    from fedhar.lodo import code_version

    path = sweep_dir / "sweep.json"
    try:
        history = json.loads(path.read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        history = []
    now = {"command": command, "file": str(sweep.path), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "code": code_version()}
    doc = {**now, "content": sweep.text, "settings": vars(sweep.settings), "base": sweep.base, "grid": sweep.grid,
           "trials": {t.trial_id: t.values for t in trials}, "history": history + [now]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def plan(sweep: Sweep, sweep_dir: Path) -> list[tuple[Trial, str]]:
    """Every trial with its state (done / partial / failed / pending)."""
    return [(t, trial_state(t)) for t in sweep.trials(sweep_dir)]


def run_sweep(sweep: Sweep, sweep_dir: Path | None = None, address: str | None = None,
              max_concurrent: int | None = None, command: str = "", log=None) -> SweepOutcome:
    """Run (or resume) every trial not done yet, as Ray tasks; returns the counts and table."""
    log = log or say
    settings = sweep.settings
    address = settings.ray_address if address is None else address
    limit = settings.max_concurrent if max_concurrent is None else max_concurrent
    sweep_dir = Path(sweep_dir or sweep.default_dir()).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    states = plan(sweep, sweep_dir)
    trials = [t for t, _ in states]
    todo = [t for t, s in states if s != "done"]
    skipped = len(trials) - len(todo)
    _write_sweep_json(sweep, sweep_dir, trials, command)
    resuming = sum(s == "partial" for _, s in states)
    log(f"sweep {settings.name}: {len(trials)} trials, {skipped} already done, {len(todo)} to run"
        + (f" ({resuming} resume from a checkpoint)" if resuming else "") + f" -> {sweep_dir}")
    ok = failed = 0
    if todo:
        with _ray_session(address) as ray:
            resources = ray.cluster_resources()
            has = f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"
            slots = capacity(resources, settings)
            if slots < 1:
                raise FedharError(f"a trial needs {settings.cpus_per_trial:g} CPU and {settings.gpus_per_trial:g} GPU; "
                                  f"the Ray cluster has {has}")
            parallel = min(slots, limit) if limit else slots
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            log(f"sweep {settings.name}: {parallel} trials at a time ({settings.cpus_per_trial:g} CPU, "
                f"{settings.gpus_per_trial:g} GPU each; Ray has {has} on {nodes} node(s))")
            task = ray.remote(num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial,
                              max_calls=1, max_retries=0)(run_trial)
            threads = max(1, int(settings.cpus_per_trial))
            queue, running, took = list(todo), {}, []

            def fill():
                while queue and len(running) < parallel:
                    trial = queue.pop(0)
                    running[task.remote(trial.cfg, threads, os.getcwd())] = (trial, time.perf_counter())

            bar = progress(total=len(trials), initial=skipped, desc="trials", unit="trial")
            try:
                fill()
                while running:
                    ready, _ = ray.wait(list(running), num_returns=1)
                    trial, submitted = running.pop(ready[0])
                    try:
                        summary = ray.get(ready[0])
                    except ray.exceptions.RayError as exc:  # the worker died (killed, out of memory)
                        text = str(exc).strip().splitlines()
                        summary = {"status": "failed", "error": f"{type(exc).__name__}: {text[-1] if text else ''}",
                                   "seconds": round(time.perf_counter() - submitted, 1)}
                    fill()
                    write_marker(trial, summary)
                    write_results(sweep, trials, sweep_dir)
                    took.append(summary["seconds"])
                    ok += summary["status"] == "ok"
                    failed += summary["status"] != "ok"
                    log(_progress(trial, summary, len(trials), skipped + ok, failed, len(running), len(queue),
                                  sum(took) / len(took) * (len(queue) + len(running)) / parallel))
                    bar.update(1)
            finally:
                bar.close()
                for ref in running:  # interrupted: stop what still runs (it resumes next time)
                    ray.cancel(ref, force=True)
    results = write_results(sweep, trials, sweep_dir)
    return SweepOutcome(sweep_dir, len(trials), skipped, ok + failed, ok, failed, results)
