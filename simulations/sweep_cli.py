"""`fedhar sweep`: a grid of federated runs from a TOML file, as Ray tasks, resumable."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

EPILOG = """\
sweep file (TOML):
  [sweep]                       optional: name, cpus_per_trial, gpus_per_trial,
                                max_concurrent, ray_address
  [base]                        FLConfig values every trial shares (see fedhar fl --help)
  [grid]                        lists of values; one trial per combination

Each trial runs in OUT_DIR/trials/<trial id> (a hash of its configuration). A trial already
finished is skipped, one cut short resumes from its checkpoint, a failed one runs again.
OUT_DIR/results.csv has one row per trial and round. Examples: simulations/sweeps/*.toml
"""


def register(commands) -> None:
    p = commands.add_parser(
        "sweep", help="a grid of federated runs (TOML file) as Ray tasks, resumable, one results table",
        description="Run every combination of a sweep file's [grid] over its [base] as Ray tasks (one\n"
        "federated run each, inline engine), on a local Ray instance or a cluster. Re-running\n"
        "the same command skips what is done and resumes what was cut short.",
        epilog=EPILOG)
    p.add_argument("file", type=Path, help="the sweep file (.toml)")
    p.add_argument("--out-dir", type=Path, help="sweep folder (default: runs/sweeps/<name>)")
    p.add_argument("--address", help="Ray cluster to run on ('auto', 'host:6379', 'ray://host:10001'); "
                   "default: the file's ray_address, else a local Ray instance")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once "
                   "(default: the file's max_concurrent, else what the Ray resources hold)")
    p.add_argument("--dry-run", action="store_true", help="list the trials and which are done; run nothing")
    p.set_defaults(run=cmd_sweep)


def cmd_sweep(args) -> int:
    from fedhar.errors import FedharError
    from simulations.sweep import load_sweep, plan, run_sweep

    sweep = load_sweep(args.file)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise FedharError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    out = args.out_dir or sweep.default_dir()
    if args.dry_run:
        states = plan(sweep, out)
        counts = {s: sum(x == s for _, x in states) for s in ("done", "partial", "failed", "pending")}
        print(f"sweep {sweep.settings.name}: {len(states)} trials -> {out.resolve()}  "
              f"({', '.join(f'{n} {s}' for s, n in counts.items() if n)})")
        names = list(sweep.grid)
        width = {n: max(len(n), *(len(str(t.values[n])) for t, _ in states)) for n in names}
        print((f"  {'trial':10}  {'state':7}  " + "  ".join(f"{n:{width[n]}}" for n in names)).rstrip())
        for trial, state in states:
            print((f"  {trial.trial_id:10}  {state:7}  "
                   + "  ".join(f"{str(trial.values[n]):{width[n]}}" for n in names)).rstrip())
        return 0
    outcome = run_sweep(sweep, out, address=args.address, max_concurrent=args.max_concurrent,
                        command="fedhar " + shlex.join(sys.argv[1:]))
    print(f"\nsweep {sweep.settings.name}: {outcome.ran} ran ({outcome.ok} ok, {outcome.failed} failed), "
          f"{outcome.skipped} already done, of {outcome.trials}")
    df = outcome.results
    if len(df) and "round" in df:
        last = df[df["status"] != "ok"].copy()
        ok = df[df["status"] == "ok"]
        if len(ok):
            final = ok.loc[ok.groupby("trial_id")["round"].idxmax()]
            cols = ["trial_id", *sweep.grid, *[c for c in ("accuracy", "macro_f1", "seconds") if c in final]]
            print("\nFinal round per trial:")
            print(final[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if len(last):
            print("\nFailed (details in each trial's trial.log):")
            print(last[["trial_id", *sweep.grid, "error"]].to_string(index=False))
    print(f"\nTable: {outcome.results_csv}; trials: {outcome.sweep_dir / 'trials'}")
    return 1 if outcome.failed else 0
