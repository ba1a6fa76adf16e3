"""Per-process memory of a command's process tree (what a Ray run's 2-3 GiB are made of).

Runs the command, samples every process under it (psutil, every ``--every`` seconds: RSS
and PSS, PSS splitting shared pages between the processes sharing them) and writes one row
per process: its role (driver, Ray actor, each Ray service, idle pre-started worker, ...),
peak RSS and PSS, and the tree's peaks (sums within one sample). Issue 25's Ray target
(10 clients <= 1.5 GiB) is read from it; see results/bench/cohort/README.md.

    python benchmarks/tree_memory.py --out results/bench/cohort/ray10/tree.csv -- \\
        python benchmarks/bench_fl_scaling.py --only ray-10 --rounds 3 --out results/bench/cohort/ray10
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import psutil

MIB = 2 ** 20
# (substring of the command line, role); first match wins. A Ray worker renames itself
# (ray::IDLE, then ray::ClientAppActor...): the role is that of the last command line seen.
ROLES = [
    ("ray::IDLE", "Ray idle worker (pre-started)"),
    ("ray::ClientAppActor", "Ray actor (ClientAppActor)"),
    ("ray::DashboardAgent", "Ray dashboard agent"),
    ("ray::RuntimeEnvAgent", "Ray runtime-env agent"),
    ("ray::", "Ray worker (other)"),
    ("gcs_server", "Ray GCS server"),
    ("raylet/raylet", "Ray raylet"),  # (before default_worker.py: the raylet's command line names it)
    ("default_worker.py", "Ray worker (starting)"),
    ("runtime_env/agent", "Ray runtime-env agent"),
    ("dashboard/agent.py", "Ray dashboard agent"),
    ("dashboard.py", "Ray dashboard (head)"),
    ("log_monitor.py", "Ray log monitor"),
    ("monitor.py", "Ray autoscaler monitor"),
    ('"name": "prepare"', "benchmark's data step (ends before the run)"),
    ("--child", "benchmark child (the driver)"),
]


def role(cmdline: list[str]) -> str:
    line = " ".join(cmdline)
    return next((name for key, name in ROLES if key in line), "other: " + line[:60])


def sample(root: psutil.Process, peaks: dict, tree: dict, skip_root: bool) -> None:
    rss_sum = pss_sum = 0
    for p in [*([] if skip_root else [root]), *root.children(recursive=True)]:
        try:
            mem = p.memory_full_info()
            key = (p.pid, p.create_time())
            entry = peaks.setdefault(key, {"pid": p.pid, "rss": 0, "pss": 0, "role": "?"})
            cmdline = p.cmdline()
            if cmdline:  # (empty while the process exits)
                entry["role"] = role(cmdline)
            peaks[key]["rss"] = max(peaks[key]["rss"], mem.rss)
            peaks[key]["pss"] = max(peaks[key]["pss"], mem.pss)
            rss_sum, pss_sum = rss_sum + mem.rss, pss_sum + mem.pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    tree["rss"], tree["pss"] = max(tree["rss"], rss_sum), max(tree["pss"], pss_sum)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="csv: one row per process, then the tree's peaks")
    ap.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("--skip-root", action="store_true",
                    help="leave the command's own process out (a benchmark's parent that only launches the run)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    proc = subprocess.Popen(command)
    root, peaks, tree = psutil.Process(proc.pid), {}, {"rss": 0, "pss": 0}
    while proc.poll() is None:
        sample(root, peaks, tree, args.skip_root)
        time.sleep(args.every)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(peaks.values(), key=lambda r: -r["pss"])
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pid", "role", "peak_rss_mib", "peak_pss_mib"])
        for r in rows:
            w.writerow([r["pid"], r["role"], round(r["rss"] / MIB, 1), round(r["pss"] / MIB, 1)])
        w.writerow(["", "tree (sum within one sample)", round(tree["rss"] / MIB, 1), round(tree["pss"] / MIB, 1)])
    for r in rows:
        print(f"{r['pid']:>8}  {r['role']:<34} RSS {r['rss'] / MIB:7.0f}  PSS {r['pss'] / MIB:7.0f} MiB")
    print(f"tree peak RSS {tree['rss'] / MIB:.0f} MiB, PSS {tree['pss'] / MIB:.0f} MiB (exit {proc.returncode}): {out}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
