"""`fedhar sweep`: federated runs from a TOML file (grid, random or Optuna search) on Ray Tune."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

EPILOG = """\
sweep file (TOML; simulations/sweep.py describes every key):
  [sweep]        optional: name, cpus_per_trial, gpus_per_trial, max_concurrent, ray_address,
                 num_samples, algorithm (random|optuna), metric, mode, scheduler, grace_rounds, seed
  [base]         FLConfig values every trial shares (see fedhar fl --help)
  [grid]         lists of values; every combination runs
  [search]       distributions drawn num_samples times: lr = { loguniform = [1e-4, 1e-2] },
                 { uniform = [a, b] }, { choice = [...] }; [search.<strategy>]: that strategy's own
  [confirm]      optional: the best trial of each experiment re-run on seeds, compared to a baseline

OUT_DIR/tune/<experiment>/<trial id>: Tune's files per trial (result.json, TensorBoard events,
stdout) and the federation's run/. Running the command again resumes: finished trials are not
run again. OUT_DIR/results.csv: one row per trial and round. Examples: simulations/sweeps/*.toml
"""


def register(commands) -> None:
    p = commands.add_parser(
        "sweep", help="federated runs from a TOML file (grid / random / Optuna search) on Ray Tune, resumable",
        description="Run a sweep file's trials (its [grid] crossed with num_samples draws of its [search]\n"
        "over its [base]) as Ray Tune trials, one federation each (inline engine), on a local Ray\n"
        "instance or a cluster. Re-running the same command resumes the sweep.",
        epilog=EPILOG)
    p.add_argument("file", type=Path, help="the sweep file (.toml)")
    p.add_argument("--out-dir", type=Path, help="sweep folder (default: runs/sweeps/<name>)")
    p.add_argument("--address", help="Ray cluster to run on ('auto', 'host:6379', 'ray://host:10001'); "
                   "default: the file's ray_address, else a local Ray instance")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once "
                   "(default: the file's max_concurrent, else what the Ray resources hold)")
    p.add_argument("--scheduler", choices=("fifo", "asha"), help="asha: stop bad trials early on the rounds "
                   "reported so far (default: the file's scheduler, else fifo)")
    p.add_argument("--num-samples", type=int, help="draws of [search] (default: the file's num_samples)")
    p.add_argument("--dry-run", action="store_true", help="list the experiments and their spaces; run nothing")
    p.set_defaults(run=cmd_sweep)


def _dry_run(sweep, out: Path, num_samples: int) -> int:
    print(f"sweep {sweep.settings.name} -> {out.resolve()}  ({sweep.settings.algorithm} search, "
          f"metric {sweep.settings.metric} ({sweep.settings.mode}), {sweep.settings.scheduler} scheduler)")
    for exp in sweep.experiments():
        started = (out / "tune" / exp.name).exists()
        print(f"  experiment {exp.name}: {exp.size(num_samples)} trials"
              + ("  (started: resumes)" if started else ""))
        for k, v in exp.grid.items():
            print(f"    grid    {k} = {v}")
        for k, d in exp.search.items():
            print(f"    search  {k} ~ {d}")
    if sweep.confirm:
        c = sweep.confirm
        print(f"  confirm: each experiment's best on seeds {list(c.seeds)} with {c.set}; {c.metric} vs {c.baseline}")
    return 0


def cmd_sweep(args) -> int:
    from fedhar.errors import FedharError
    from simulations.sweep import load_sweep

    sweep = load_sweep(args.file)
    for flag in ("max_concurrent", "num_samples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise FedharError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    out = args.out_dir or sweep.default_dir()
    if args.dry_run:
        return _dry_run(sweep, out, args.num_samples or sweep.settings.num_samples)
    from simulations.sweep_run import run_sweep

    outcome = run_sweep(sweep, out, address=args.address, max_concurrent=args.max_concurrent,
                        scheduler=args.scheduler, num_samples=args.num_samples,
                        command="fedhar " + shlex.join(sys.argv[1:]))
    counts = outcome.counts()
    print(f"\nsweep {sweep.settings.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    df = outcome.results
    metric = sweep.settings.metric
    if len(df):
        ok = df[df["status"].isin(["ok", "stopped"])].dropna(subset=["round"])
        if len(ok):
            final = ok.loc[ok.groupby(["experiment", "trial_id"])["round"].idxmax()]
            varied = list(dict.fromkeys(k for e in sweep.experiments() for k in [*e.grid, *e.search]))
            cols = ["experiment", "trial_id", "status", *varied, "round",
                    *[c for c in dict.fromkeys((metric, "accuracy", "seconds")) if c in final]]
            print("\nLast round per trial:")
            print(final[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        failed = df[df["status"] == "failed"].drop_duplicates(["experiment", "trial_id"])
        if len(failed):
            print("\nFailed (details in each trial's error.txt and stderr):")
            print(failed[["experiment", "trial_id", "error"]].to_string(index=False))
    if outcome.comparison is not None:
        print(f"\nComparison ({outcome.sweep_dir / 'comparison.csv'}):")
        print((outcome.sweep_dir / "comparison.md").read_text())
    print(f"\nTable: {outcome.results_csv}; Tune's files: {outcome.sweep_dir / 'tune'} "
          f"(tensorboard --logdir {outcome.sweep_dir / 'tune'})")
    return 1 if counts.get("failed") else 0
