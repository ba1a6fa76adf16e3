"""Run a sweep (simulations/sweep.py) on Ray Tune, resume it, and write its tidy table.

Each experiment of the sweep is one Tune experiment in ``<sweep dir>/tune/<name>``
(``all``, or one per strategy when the file has per-strategy search tables; ``confirm`` for
the confirmation runs, simulations/sweep_confirm.py): Tune's experiment state, and per
trial (folder = Tune's trial id) its params.json, result.json, progress.csv, TensorBoard
events, stdout/stderr and the federation's own folder ``run/`` (rounds.csv, clients.csv,
config.json, checkpoint.pkl). ``tensorboard --logdir <sweep dir>/tune`` shows every trial.

Each trial is ``sweep.trial`` in a Tune function trainable with ``cpus_per_trial`` CPUs
reserved (``tune.with_resources``; a fresh actor process per trial, so that its peak RSS
is its own). Random search (``BasicVariantGenerator`` seeded with [sweep] seed) or Optuna's
TPE (``OptunaSearch``, seeded) draw the [search] space; ``--scheduler asha`` stops bad
trials early on the rounds reported so far (``ASHAScheduler(time_attr="round")``).

Resume: running the same command again restores each experiment (``Tuner.restore``,
errored trials resumed): finished trials are not run again, interrupted ones continue
from their federation's checkpoint. Ctrl-C stops Tune gracefully (it saves its state; a
second Ctrl-C stops at once), writes results.csv and ends the command with exit status 130
(``graceful_interrupt``): never as if the sweep had finished.

``<sweep dir>/results.csv``, rewritten whenever a trial ends, one row per (trial, round):
  experiment, trial_id, status   ok | stopped (by ASHA) | failed | running | pending
  config columns        KEY_COLUMNS, and every field the file sets ([base], [grid], [search])
  round and the round metrics whatever the trial's rounds.csv has (train_loss, accuracy,
                        macro_f1, bytes_up, server_accuracy, ...); a failed trial that
                        reported nothing is one row, round empty
  seconds, cpu_seconds  the trial's wall time so far (of its last run, when resumed) and its
                        process's CPU time; peak_rss_mb: that process's peak RSS
  node, hostname, node_ip   where it ran (node: the Ray node id)
  clients, resumed, error   the federation's clients; whether it continued from a
                        checkpoint; the failure's last line
``<sweep dir>/sweep.json`` keeps the sweep file's text, the command and earlier commands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd

from fedhar.console import say
from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.sweep import TRIAL_COLUMNS, Experiment, Sweep, trial
from simulations.sweep_confirm import CONFIRM, comparison_markdown, comparison_table, confirm_space, select_best

TUNE_DIR = "tune"
#: what Tune adds to every result: not round metrics (hostname and node_ip are kept)
TUNE_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
             "time_total_s", "pid", "config", "time_since_restore", "iterations_since_restore", "should_checkpoint",
             "experiment_tag", "round_seconds"}


@dataclass
class SweepOutcome:
    sweep_dir: Path
    results: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    comparison: pd.DataFrame | None = field(repr=False, default=None)

    @property
    def results_csv(self) -> Path:
        return self.sweep_dir / "results.csv"

    def counts(self) -> dict:
        if not len(self.results):
            return {}
        trials = self.results.drop_duplicates(["experiment", "trial_id"])
        return trials["status"].value_counts().to_dict()


# --------------------------------------------------------------------------- the table


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _reported(trial_dir: Path) -> list[dict]:
    """The trial's reported rows (Tune's result.json), one per round (the last report wins)."""
    rows = {}
    try:
        text = (trial_dir / "result.json").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if "round" in row:
            rows[int(row["round"])] = row
    return [rows[r] for r in sorted(rows)]


def _with_run_rows(trial_dir: Path, rows: list[dict]) -> list[dict]:
    """``rows`` completed from the run's own rounds.csv: a driver killed before Tune synced a
    trial's result.json loses its last reports, never the rounds its run wrote (same node)."""
    try:
        table = pd.read_csv(trial_dir / "run" / "rounds.csv")
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return rows
    have = {int(r["round"]) for r in rows}
    place = {k: rows[-1].get(k) for k in ("node", "hostname", "node_ip", "clients", "resumed")} if rows else {}
    extra = [{**{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}, **place}
             for r in table.to_dict("records") if int(r["round"]) not in have]
    return sorted(rows + extra, key=lambda r: int(r["round"]))


def _params(trial_dir: Path) -> dict:
    try:
        config = json.loads((trial_dir / "params.json").read_text())
    except (OSError, ValueError):
        return {}
    return config.get("fl", config)


def trial_rows(experiment: str, trial_dir: Path, status: str | None, columns: list[str]) -> list[dict]:
    """One row per reported round of one trial; ``status``: Tune's (None: inferred from files)."""
    config = _params(trial_dir)
    rounds = _with_run_rows(trial_dir, _reported(trial_dir))
    try:
        wanted = FLConfig(**config).rounds
    except Exception:  # noqa: BLE001 (a config FLConfig refuses: the trial failed)
        wanted = config.get("rounds", 0)
    error = _last_line(trial_dir / "error.txt")
    if len(rounds) >= wanted and wanted:
        state = "ok"
    elif status == "ERROR" or (status is None and error):
        state = "failed"
    elif status == "TERMINATED" or status is None:
        state = "stopped" if rounds else "failed"
    else:
        state = status.lower()
    defaults = {f.name: f.default for f in fields(FLConfig)}
    head = {"experiment": experiment, "trial_id": trial_dir.name, "status": state,
            **{c: config.get(c, defaults.get(c)) for c in columns}}
    out = []
    integers = {k for r in rounds for k, v in r.items() if isinstance(v, int) and not isinstance(v, bool)}
    for r in rounds or [{"round": None}]:
        metrics = {k: v for k, v in r.items() if k not in TUNE_KEYS and k not in TRIAL_COLUMNS}
        tail = {c: r.get(c) for c in TRIAL_COLUMNS}
        tail["error"] = error if state == "failed" else ""
        out.append({**head, **metrics, **tail})
    if out:
        out[0]["_integers"] = integers
    return out


def _statuses(exp_dir: Path) -> dict[str, str]:
    """Trial id -> Tune's status, from the experiment's saved state (empty if none yet)."""
    try:
        from ray.tune import ExperimentAnalysis

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = ExperimentAnalysis(str(exp_dir))
        return {t.trial_id: t.status for t in analysis.trials}
    except Exception:  # noqa: BLE001 (no state saved yet, or a state being written)
        return {}


def results_table(sweep: Sweep, sweep_dir: Path, live: dict | None = None) -> pd.DataFrame:
    """Every trial of every experiment under ``sweep_dir/tune``; ``live``: {experiment:
    {trial id: status}} of the experiment now running (fresher than its saved state)."""
    columns = sweep.config_columns()
    rows = []
    root = Path(sweep_dir) / TUNE_DIR
    for exp_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        statuses = _statuses(exp_dir)
        running = (live or {}).get(exp_dir.name, {})  # trial id -> (status, Tune's local folder)
        statuses.update({tid: status for tid, (status, _) in running.items()})
        dirs = {p.name: p for p in exp_dir.iterdir() if (p / "params.json").exists()}
        dirs.update({tid: Path(path) for tid, (_, path) in running.items() if path and (Path(path) / "params.json").exists()})
        for tid in sorted(dirs):
            rows += trial_rows(exp_dir.name, dirs[tid], statuses.get(tid), columns)
    integers = {"round", "clients"}.union(*(r.pop("_integers", set()) for r in rows))
    df = pd.DataFrame(rows)
    if len(df):  # trial-level columns last, whatever metrics were reported
        df = df[[c for c in df.columns if c not in TRIAL_COLUMNS] + list(TRIAL_COLUMNS)]
        for column in integers & set(df.columns):  # a failed trial's empty cells keep them integers
            if df[column].dropna().map(lambda v: float(v).is_integer()).all():
                df[column] = df[column].astype("Int64")
    return df


def write_results(sweep: Sweep, sweep_dir: Path, live: dict | None = None) -> pd.DataFrame:
    df = results_table(sweep, sweep_dir, live)
    tmp = Path(sweep_dir) / "results.csv.tmp"
    df.to_csv(tmp, index=False)
    os.replace(tmp, Path(sweep_dir) / "results.csv")
    return df


# --------------------------------------------------------------------------- Tune


def _tune_callback(sweep: Sweep, sweep_dir: Path, experiment: str, total: int, log):
    from ray.tune import Callback

    class TableCallback(Callback):
        """After each trial: one progress line, and results.csv rewritten."""

        def _write(self, trials, trial=None) -> None:
            # Tune writes a trial's files in a staging folder (trial.local_path) first, then syncs them
            live = {experiment: {t.trial_id: (t.status, t.local_path) for t in trials}}
            if trial is not None:
                status = "ERROR" if trial.status == "ERROR" or trial.error_file else "TERMINATED"
                live[experiment][trial.trial_id] = (status, trial.local_path)
            df = write_results(sweep, sweep_dir, live)
            if trial is None or not len(df):
                return
            mine = df[(df["experiment"] == experiment) & (df["trial_id"] == trial.trial_id)]
            if not len(mine):
                return
            last = mine.iloc[-1]
            ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials) + (trial.status not in ("TERMINATED", "ERROR"))
            metric = sweep.settings.metric
            score = f"{metric} {last[metric]:.3f}" if metric in last and pd.notna(last[metric]) else "no score"
            values = " ".join(f"{k}={last[k]:.3g}" if isinstance(last[k], float) else f"{k}={last[k]}"
                              for k in self._varied() if k in last)
            rounds = "-" if pd.isna(last["round"]) else int(last["round"])
            log(f"[{experiment} {ended}/{total}] {last['status']:7} {trial.trial_id} {values}: "
                f"{score} after round {rounds}, {last['seconds'] or 0:.0f} s"
                + (f" - {last['error']}" if last["status"] == "failed" else ""))

        def _varied(self) -> list[str]:
            exp = next((e for e in sweep.experiments() if e.name == experiment), None)
            return [*exp.grid, *exp.search] if exp else ["strategy", "seed"]

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._write(trials, trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._write(trials, trial)

        def on_experiment_end(self, trials, **info):
            self._write(trials)

    return TableCallback()


def _ray_env() -> dict:
    env = {"FLWR_TELEMETRY_ENABLED": "0"}
    for name in ("FEDHAR_CACHE_DIR", "FEDHAR_DATA_DIR"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@contextlib.contextmanager
def ray_session(address: str):
    """Ray for the sweep: ``address`` a running cluster, or "" a local instance of our own
    (never one someone else started on this machine)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                   runtime_env={"env_vars": _ray_env()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's notice about accelerator env vars
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, object_store_memory=200 * 2**20, **options)
    try:
        yield ray
    finally:
        ray.shutdown()


def trainable(sweep: Sweep, exp_dir: Path):
    """``sweep.trial`` with the trial's resources reserved and where its runs live."""
    from ray import tune

    s = sweep.settings
    fn = tune.with_parameters(trial, out_root=str(exp_dir), cwd=os.getcwd(), threads=max(1, int(s.cpus_per_trial)),
                              engine=s.engine, cohort_size=s.cohort_size)
    return tune.with_resources(fn, {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})


def tune_config(sweep: Sweep, exp: Experiment, scheduler: str, num_samples: int, max_concurrent: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    s = sweep.settings
    if s.algorithm == "optuna" and exp.search:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise FedharError("[sweep] algorithm = 'optuna' needs Optuna: pip install 'fedhar[optuna]'") from None
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(seed=s.seed)
    else:
        # Tune ignores max_concurrent_trials for a SearchGenerator passed in (it only warns):
        # the limit has to be given to the generator itself
        search = BasicVariantGenerator(random_state=s.seed, max_concurrent=max_concurrent or 0)
    sched = None
    if scheduler == "asha":
        rounds = max(exp.grid.get("rounds") or [FLConfig(**exp.base).rounds])
        sched = ASHAScheduler(time_attr="round", max_t=rounds, grace_period=min(s.grace_rounds, rounds),
                              reduction_factor=2)
    limit = None if isinstance(search, BasicVariantGenerator) else max_concurrent or None
    return tune.TuneConfig(metric=s.metric, mode=s.mode, search_alg=search, scheduler=sched,
                           num_samples=num_samples if exp.search else 1, max_concurrent_trials=limit,
                           trial_dirname_creator=lambda t: t.trial_id, trial_name_creator=lambda t: t.trial_id)


def run_experiment(sweep: Sweep, sweep_dir: Path, exp: Experiment, param_space: dict, *, scheduler: str,
                   num_samples: int, max_concurrent: int, log) -> None:
    """One Tune experiment: restored if it was started before, else started."""
    from ray import tune

    root = Path(sweep_dir) / TUNE_DIR
    exp_dir = root / exp.name
    fn = trainable(sweep, exp_dir)
    if tune.Tuner.can_restore(str(exp_dir)):
        log(f"sweep {sweep.settings.name}: resuming experiment {exp.name} ({exp_dir})")
        tuner = tune.Tuner.restore(str(exp_dir), trainable=fn, resume_errored=True)
    else:
        total = exp.size(num_samples) if "fl" not in param_space else len(param_space["fl"]["grid_search"])
        # log_to_file: each trial's stdout/stderr in its working dir (sweep.trial keeps them beside its results)
        run = tune.RunConfig(name=exp.name, storage_path=str(root), log_to_file=True, verbose=1,
                             callbacks=[_tune_callback(sweep, sweep_dir, exp.name, total, log)])
        tuner = tune.Tuner(fn, param_space=param_space, run_config=run,
                           tune_config=tune_config(sweep, exp, scheduler, num_samples, max_concurrent))
    with graceful_interrupt():
        tuner.fit()


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[None]:
    """Ctrl-C during ``tuner.fit()``: Tune's own graceful stop, then KeyboardInterrupt (exit 130;
    no later experiment or confirmation starts). Tune's SIGINT handler alone makes ``fit()``
    return as if the experiment had ended (the sweep exited 0). Ours takes SIGINT and asks Tune
    to stop through SIGUSR1, which Tune handles the same way; a second Ctrl-C stops at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield
        return
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: object) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(signum)
        say("fedhar sweep: interrupted; stopping the trials and saving Tune's state (Ctrl-C again: at once)")
        os.kill(os.getpid(), signal.SIGUSR1)

    previous, env = signal.getsignal(signal.SIGINT), os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune keeps its hands off SIGINT (ours)
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
    if interrupted:
        raise KeyboardInterrupt


def _write_sweep_json(sweep: Sweep, sweep_dir: Path, command: str, options: dict) -> None:
    from fedhar.lodo import code_version

    path = sweep_dir / "sweep.json"
    try:
        history = json.loads(path.read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        history = []
    now = {"command": command, "file": str(sweep.path), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "code": code_version(), **options}
    doc = {**now, "content": sweep.text, "settings": vars(sweep.settings), "base": sweep.base, "grid": sweep.grid,
           "search": {k: str(v) for k, v in sweep.search.items()},
           "per_strategy": {s: {k: str(v) for k, v in space.items()} for s, space in sweep.per_strategy.items()},
           "history": history + [now]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def check_capacity(ray, sweep: Sweep) -> None:
    resources = ray.cluster_resources()
    s = sweep.settings
    if resources.get("CPU", 0) < s.cpus_per_trial or resources.get("GPU", 0) < s.gpus_per_trial:
        raise FedharError(f"a trial needs {s.cpus_per_trial:g} CPU and {s.gpus_per_trial:g} GPU; the Ray cluster has "
                          f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU")


def confirm_stage(sweep: Sweep, sweep_dir: Path, max_concurrent: int, log) -> pd.DataFrame | None:
    """Select, confirm (a Tune experiment, restored if started before), compare."""
    sweep_dir = Path(sweep_dir)
    best = select_best(sweep, write_results(sweep, sweep_dir),
                       lambda exp, tid: _params(sweep_dir / TUNE_DIR / exp / tid))
    missing = [e.name for e in sweep.experiments() if e.name not in best]
    if missing:
        log(f"sweep {sweep.settings.name}: no finished trial to confirm for {', '.join(missing)}")
    if not best:
        return None
    tmp = sweep_dir / "tuned.json.tmp"
    tmp.write_text(json.dumps(best, indent=1, default=str))
    os.replace(tmp, sweep_dir / "tuned.json")
    for name, chosen in best.items():
        log(f"sweep {sweep.settings.name}: {name}: best {chosen['values']} ({chosen['metric']} "
            f"{chosen['score']:.3f}, trial {chosen['trial_id']} of {chosen['trials']})")
    exp = Experiment(CONFIRM, {}, {}, {})
    run_experiment(sweep, sweep_dir, exp, confirm_space(sweep, best), scheduler="fifo", num_samples=1,
                   max_concurrent=max_concurrent, log=log)
    results = write_results(sweep, sweep_dir)
    table = comparison_table(sweep, results, best, sweep_dir)
    table.to_csv(sweep_dir / "comparison.csv", index=False)
    (sweep_dir / "comparison.md").write_text(comparison_markdown(table, sweep))
    log(f"sweep {sweep.settings.name}: comparison -> {sweep_dir / 'comparison.csv'}")
    return table


def run_sweep(sweep: Sweep, sweep_dir: Path | None = None, address: str | None = None,
              max_concurrent: int | None = None, scheduler: str | None = None, num_samples: int | None = None,
              command: str = "", log=None) -> SweepOutcome:
    """Run (or resume) every experiment of the sweep, then its confirmation ([confirm])."""

    log = log or say
    s = sweep.settings
    address = s.ray_address if address is None else address
    limit = s.max_concurrent if max_concurrent is None else max_concurrent
    scheduler = scheduler or s.scheduler
    num_samples = num_samples or s.num_samples
    sweep_dir = Path(sweep_dir or sweep.default_dir()).resolve()
    if (sweep_dir / "trials").is_dir() and not (sweep_dir / TUNE_DIR).exists():
        raise FedharError(f"{sweep_dir} holds a sweep of the runner before Ray Tune (trials/<id>/): it cannot be "
                          "resumed on Ray Tune, and its results.csv would be replaced; give another --out-dir")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_sweep_json(sweep, sweep_dir, command, {"scheduler": scheduler, "num_samples": num_samples})
    experiments = sweep.experiments()
    log(f"sweep {s.name}: {len(experiments)} experiment(s), "
        f"{sum(e.size(num_samples) for e in experiments)} trials ({scheduler} scheduler, {s.algorithm} search) "
        f"-> {sweep_dir}")
    comparison = None
    try:
        with ray_session(address) as ray:
            check_capacity(ray, sweep)
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            resources = ray.cluster_resources()
            log(f"sweep {s.name}: Ray has {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU on {nodes} "
                f"node(s); {s.cpus_per_trial:g} CPU per trial")
            for exp in experiments:
                run_experiment(sweep, sweep_dir, exp, exp.param_space(), scheduler=scheduler, num_samples=num_samples,
                               max_concurrent=limit, log=log)
            if sweep.confirm:
                comparison = confirm_stage(sweep, sweep_dir, max_concurrent=limit, log=log)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):  # the table of what finished, if it can be read
            write_results(sweep, sweep_dir)
        log(f"sweep {s.name}: interrupted; the same command resumes it ({sweep_dir})")
        raise
    results = write_results(sweep, sweep_dir)
    return SweepOutcome(sweep_dir, results, comparison)
