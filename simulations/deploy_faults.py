"""Faults on a local deployment (a SuperLink and 3 SuperNodes on loopback), run and recorded.

    .venv/bin/python -m simulations.deploy_faults --out results/deploy

Too slow for the test suite (minutes on two busy cores: every Flower message starts a fresh
ClientApp process), so its output is committed under results/deploy/ and
tests/test_deploy.py keeps smaller checks of the same code paths. Two scenarios:

churn   one run of 5 rounds (every client trains every round; --round-timeout, default 90 s:
        a phase of 3 ClientApps takes 20-35 s on two busy cores, so 20 s would time out
        healthy clients; a killed SuperNode is declared offline by the SuperLink 2 heartbeat
        intervals (2 x 30 s) after its last heartbeat at the latest, which then answers the
        messages to it with a "Node Unavailable" error before the round timeout):
        - partition 1's SuperNode is killed (SIGKILL: it, its SuperExec and ClientApps, a
          crash) as soon as the ServerApp logs round 1, and restarted with the same
          partition (it gets a new node id) as soon as clients.csv shows its round-1 train
          message failed or timed out;
        - partition 2's SuperNode is stopped gracefully (SIGTERM: it deactivates and
          unregisters itself) after round 2's checkpoint, and restarted once the ServerApp
          has recorded it offline (or the round after, whichever comes first).
resume  the same 3-round run twice: straight through, and with its ServerApp process
        (flwr-serverapp) killed after round 1's checkpoint, then submitted again with
        resume=true; the two runs' tables are compared.

Per scenario OUT/<scenario>/ receives the run's clients.csv, rounds.csv, config.json and
the processes' logs; OUT/faults.md and OUT/faults.json summarise the timings and outcomes.
The deployment's own state (FLWR_HOME: SQLite state, installed FABs) stays in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.deploy import CONNECTION, LocalDeployment, interrupt_on_sigterm, prepare
from simulations.flwr_launch import COMPLETED, stop_tree, write_run_config

N_NODES = 3


ROUND_TIMEOUT = 90.0


def base_config(out_dir: Path, **changes) -> FLConfig:
    return FLConfig(**{**dict(synthetic_domains=3, synthetic_subjects=3, pretrain_epochs=1, batch_size=32,
                              out_dir=str(out_dir)), **changes})


class Clock:
    def __init__(self):
        self.t0 = time.monotonic()
        self.events: list[dict] = []

    def __call__(self, what: str, **extra) -> float:
        t = round(time.monotonic() - self.t0, 1)
        self.events.append({"t": t, "event": what, **extra})
        print(f"[{t:7.1f} s] {what}", flush=True)
        return t


def clients_rows(out_dir: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(out_dir / "clients.csv")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["round", "phase", "partition_id", "status"])


def checkpoint_round(out_dir: Path) -> int:
    try:
        with open(out_dir / "checkpoint.pkl", "rb") as f:
            return int(pickle.load(f)["round"])
    except (FileNotFoundError, EOFError, pickle.UnpicklingError):
        return 0


def wait_until(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)
    return result


def follow_rounds(sub, clock: Clock, seen: dict[int, float], prefix: str = "") -> None:
    """Record when each "[ROUND k/N]" line of the ServerApp first shows in the `flwr run` output."""
    for m in re.finditer(r"\[ROUND (\d+)/\d+\]", sub.output()):
        k = int(m.group(1))
        if k not in seen:
            seen[k] = clock(f"{prefix}round {k} started")


def churn(work: Path, out: Path, rounds: int, round_timeout: float) -> dict:
    cfg = prepare(base_config(work / "churn", rounds=rounds, round_timeout=round_timeout), N_NODES)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config = write_run_config(cfg, run_dir / "run_config.toml")
    clock, seen = Clock(), {}
    with LocalDeployment(work / "churn-deployment", N_NODES) as dep:
        clock("deployment up", superlink=dep.address, superlink_pid=dep.superlink.pid,
              supernodes={p: {"pid": n.proc.pid, "runtime_port": n.port} for p, n in dep.nodes.items()})
        sub = dep.submit(run_config)
        stage = "kill-1"
        while sub.proc.poll() is None:
            follow_rounds(sub, clock, seen)
            rows = clients_rows(run_dir)
            if stage == "kill-1" and 1 in seen:
                dep.kill_node(1, signal.SIGKILL)
                clock("partition 1: SuperNode killed (SIGKILL)")
                stage = "restart-1"
            elif stage == "restart-1":
                bad = rows[(rows["round"] == 1) & (rows["phase"] == "train") & (rows["partition_id"] == 1)]
                if len(bad):
                    clock(f"partition 1: round 1 train recorded {bad['status'].iloc[0]!r}")
                    node = dep.start_node(1)
                    clock("partition 1: SuperNode restarted", pid=node.proc.pid)
                    stage = "stop-2"
            elif stage == "stop-2" and checkpoint_round(run_dir) >= 2:
                dep.kill_node(2, signal.SIGTERM)
                clock("partition 2: SuperNode stopped (SIGTERM) after round 2's checkpoint")
                stage = "restart-2"
            elif stage == "restart-2":
                gone = rows[(rows["round"] >= 3) & (rows["partition_id"] == 2) & (rows["status"] != "ok")]
                if len(gone) or checkpoint_round(run_dir) >= 3:
                    if len(gone):
                        clock(f"partition 2: round {int(gone['round'].iloc[0])} {gone['phase'].iloc[0]} recorded "
                              f"{gone['status'].iloc[0]!r}")
                    node = dep.start_node(2)
                    clock("partition 2: SuperNode restarted", pid=node.proc.pid)
                    stage = "done"
            time.sleep(0.5)
        sub.wait()
        follow_rounds(sub, clock, seen)
        status = dep.wait_finished(sub.run_id)
        clock(f"run {status['status']}")
    return finish("churn", cfg, run_dir, work / "churn-deployment", out, clock, status)


def resume(work: Path, out: Path, rounds: int, round_timeout: float) -> dict:
    straight = prepare(base_config(work / "resume-straight", rounds=rounds, fraction_train=0.67,
                                   round_timeout=round_timeout), N_NODES)
    broken = replace(straight, out_dir=str(work / "resume-interrupted"))
    for cfg in (straight, broken):
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    clock = Clock()
    result = {}
    with LocalDeployment(work / "resume-deployment", N_NODES) as dep:
        clock("deployment up", superlink=dep.address, superlink_pid=dep.superlink.pid,
              supernodes={p: {"pid": n.proc.pid, "runtime_port": n.port} for p, n in dep.nodes.items()})
        sub = dep.submit(write_run_config(straight, Path(straight.out_dir) / "run_config.toml"))
        seen = {}
        while sub.proc.poll() is None:
            follow_rounds(sub, clock, seen, "uninterrupted run: ")
            time.sleep(0.5)
        sub.wait()
        result["straight"] = dep.wait_finished(sub.run_id)
        clock(f"uninterrupted run {result['straight']['status']}")
        sub = dep.submit(write_run_config(broken, Path(broken.out_dir) / "run_config.toml"))
        seen = {}

        def checkpointed():
            follow_rounds(sub, clock, seen, "interrupted run: ")
            return checkpoint_round(Path(broken.out_dir)) >= 1

        wait_until(checkpointed, 900, "round 1's checkpoint", poll=0.2)
        clock("interrupted run: round 1 checkpoint written")
        killed = dep.kill_server_app()
        clock(f"interrupted run: killed {killed} flwr-serverapp process(es) (SIGKILL)")
        try:
            sub.wait(timeout=300)
            clock(f"interrupted run: `flwr run --stream` exited {sub.proc.returncode}")
        except FedharError:
            stop_tree(sub.proc)
            clock("interrupted run: `flwr run --stream` still streaming after 300 s: stopped")
        status = dep.wait_finished(sub.run_id, timeout=180)
        if not status["status"].startswith("finished"):
            stop = subprocess.run(["flwr", "stop", sub.run_id, CONNECTION], env=dep.env, capture_output=True, text=True)
            clock(f"interrupted run: still {status['status']} after 180 s; `flwr stop` exited {stop.returncode}")
            status = dep.wait_finished(sub.run_id, timeout=120)
        result["interrupted"] = status
        clock(f"interrupted run: status {status['status']} ({status.get('status-details')})",
              checkpoint_round=checkpoint_round(Path(broken.out_dir)))
        again = replace(broken, resume=True)
        sub = dep.submit(write_run_config(again, Path(again.out_dir) / "run_config.toml"))
        seen = {}
        while sub.proc.poll() is None:
            follow_rounds(sub, clock, seen, "resumed run: ")
            time.sleep(0.5)
        sub.wait()
        result["resumed"] = dep.wait_finished(sub.run_id)
        clock(f"resumed run {result['resumed']['status']}")
    summary = finish("resume", broken, Path(broken.out_dir), work / "resume-deployment", out, clock,
                     result["resumed"])
    summary["runs"] = {k: {"status": v["status"], "elapsed": v.get("elapsed")} for k, v in result.items()}
    summary["comparison"] = compare(Path(straight.out_dir), Path(broken.out_dir))
    shutil.copy(Path(straight.out_dir) / "rounds.csv", out / "resume" / "rounds-uninterrupted.csv")
    shutil.copy(Path(straight.out_dir) / "clients.csv", out / "resume" / "clients-uninterrupted.csv")
    return summary


METRICS = ["train_loss", "accuracy", "macro_f1"]


def compare(a_dir: Path, b_dir: Path) -> dict:
    """Max |difference| between two runs' rounds.csv and per-client rows (round, phase, partition)."""
    ra, rb = pd.read_csv(a_dir / "rounds.csv"), pd.read_csv(b_dir / "rounds.csv")
    out = {"rounds_equal_shape": ra.shape == rb.shape}
    num = [c for c in ra.columns if c in rb.columns and pd.api.types.is_numeric_dtype(ra[c])]
    out["rounds_max_abs_diff"] = {c: float((ra[c] - rb[c]).abs().max()) for c in num} if ra.shape == rb.shape else None
    key = ["round", "phase", "partition_id"]

    def ok_rows(d):
        df = pd.read_csv(d / "clients.csv")
        df = df[df["phase"].isin(["train", "evaluate"]) & (df["status"] == "ok")]
        return df[key + [c for c in METRICS if c in df]].sort_values(key).reset_index(drop=True)

    ca, cb = ok_rows(a_dir), ok_rows(b_dir)
    out["client_rows"] = [len(ca), len(cb)]
    same_keys = ca[key].equals(cb[key])
    out["client_keys_equal"] = bool(same_keys)
    if same_keys:
        out["clients_max_abs_diff"] = {c: float((ca[c] - cb[c]).abs().max()) for c in METRICS if c in ca}
    return out


def finish(name: str, cfg: FLConfig, run_dir: Path, dep_dir: Path, out: Path, clock: Clock, status: dict) -> dict:
    dest = out / name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "logs").mkdir(parents=True)
    for f in ("clients.csv", "rounds.csv", "config.json", "run_config.toml"):
        if (run_dir / f).exists():
            shutil.copy(run_dir / f, dest / f)
    for log in sorted((dep_dir / "logs").glob("*.log")):
        shutil.copy(log, dest / "logs" / log.name)
    return {"scenario": name, "status": status["status"], "status_details": status.get("status-details"),
            "elapsed": status.get("elapsed"), "events": clock.events,
            "config": {k: v for k, v in cfg.settings().items() if k not in ("backbone", "out-dir")}}


def markdown(summaries: list[dict], command: str, out_root: Path) -> str:
    lines = ["# Faults on a local deployment", "",
             "Generated by simulations/deploy_faults.py (see its docstring and docs/deployment.md). "
             "Times are seconds since the deployment was up; the machine: 2 CPU cores shared with "
             "other work, so absolute times are pessimistic.", ""]
    for s in summaries:
        details = s.get("status_details")
        lines += [f"## {s['scenario']}", "", f"Command: `{s.get('command', command)}`", "",
                  f"Final status: `{s['status']}`"
                  + (f" ({details})" if details and details != "N/A" else ""), ""]
        lines += ["| t (s) | event |", "|---:|---|"] + [f"| {e['t']} | {e['event']} |" for e in s["events"]] + [""]
        folder = out_root / s["scenario"]
        rounds = pd.read_csv(folder / "rounds.csv")
        cols = [c for c in ("round", "clients_trained", "failed", "train_loss", "accuracy", "macro_f1") if c in rounds]
        lines += ["rounds.csv:", "", _md_table(rounds[cols]), ""]
        clients = pd.read_csv(folder / "clients.csv")
        bad = clients[clients["status"] != "ok"]
        if len(bad):
            cols = [c for c in ("round", "phase", "partition_id", "node_id", "status", "error") if c in bad]
            bad = bad[cols].copy()
            bad["error"] = bad["error"].astype(str).str.slice(0, 90)
            lines += ["clients.csv, rows not ok:", "", _md_table(bad), ""]
        if "comparison" in s:
            lines += ["Uninterrupted vs. killed-and-resumed:", "", "```", json.dumps(s["comparison"], indent=1),
                      "```", ""]
    return "\n".join(lines)


def _md_table(df: pd.DataFrame) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    rows += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/deploy"))
    parser.add_argument("--work", type=Path, default=None, help="deployment state and full run folders "
                        "(default: a temporary folder, removed)")
    parser.add_argument("--scenario", choices=("churn", "resume", "all"), default="all")
    parser.add_argument("--churn-rounds", type=int, default=5)
    parser.add_argument("--resume-rounds", type=int, default=3)
    parser.add_argument("--round-timeout", type=float, default=ROUND_TIMEOUT)
    parser.add_argument("--report-only", action="store_true", help="rewrite OUT/faults.md from OUT/faults.json")
    args = parser.parse_args(argv)
    if args.report_only:
        record = json.loads((args.out / "faults.json").read_text())
        (args.out / "faults.md").write_text(markdown(record["scenarios"], record["command"], args.out))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="fedhar-deploy-faults-"))
    command = "python -m simulations.deploy_faults " + " ".join(argv if argv is not None else sys.argv[1:])
    summaries = []
    try:
        with interrupt_on_sigterm():
            if args.scenario in ("churn", "all"):
                summaries.append(churn(work, args.out, args.churn_rounds, args.round_timeout))
            if args.scenario in ("resume", "all"):
                summaries.append(resume(work, args.out, args.resume_rounds, args.round_timeout))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for summary in summaries:
        summary["command"] = command
    previous = args.out / "faults.json"
    if args.scenario != "all" and previous.exists():  # keep the other scenario's record
        kept = [s for s in json.loads(previous.read_text())["scenarios"] if s["scenario"] != args.scenario]
        summaries = kept + summaries
    previous.write_text(json.dumps({"command": command, "scenarios": summaries}, indent=1, default=str))
    (args.out / "faults.md").write_text(markdown(summaries, command, args.out))
    print((args.out / "faults.md").read_text())
    return 0 if all(s["status"] == COMPLETED for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
