"""Ctrl-C (SIGINT) and SIGTERM stop `fedhar fl` on every engine within seconds (issue 27):
exit 130, no process of the run left behind (Ray's included), and the checkpoint of the last
finished round only, from which --resume goes on. Each case is a real `python -m fedhar fl
--rounds 1000` subprocess on tiny synthetic data, signalled at one moment of the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from simulations.rounds import CHECKPOINT, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic-domains", "2", "--synthetic-subjects", "2", "--batch-size", "32"]
STOP_WITHIN_S = 15  # generous for 2 busy CPU cores; a stop takes 2-5 s


def _family(pid: int) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: the tiny backbone is pretrained once."""
    return tmp_path_factory.mktemp("signals-cache")


def interrupt(tmp_path: Path, cache: Path, engine: str, sig: int, moment: str, pretrain_epochs: int = 1):
    """Start the run, wait for ``moment`` ("pretraining": its first epoch line; "between rounds":
    round 1's checkpoint appears; "mid-round": a second after it), send ``sig``; returns
    (exit status, seconds to stop, output, out-dir). Fails if anything the run started is left."""
    out = tmp_path / "run"
    log = tmp_path / "run.log"
    env = {**os.environ, "FEDHAR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
           "FLWR_TELEMETRY_ENABLED": "0"}
    argv = [sys.executable, "-m", "fedhar", "fl", *TINY, "--pretrain-epochs", str(pretrain_epochs),
            "--rounds", "1000", "--engine", engine, "--out-dir", str(out)]
    with open(log, "w") as sink:
        # a shell that starts pytest in the background (``pytest &`` in a script) has SIGINT ignored, and
        # children inherit that: give the run the terminal's default, as a user's Ctrl-C meets it
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while not (("epoch 1/" in log.read_text()) if moment == "pretraining" else (out / CHECKPOINT).exists()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{moment} never came:\n{log.read_text()}"
            family |= _family(proc.pid)
            time.sleep(0.1)
        if moment == "mid-round":
            time.sleep(1.0)
        family |= _family(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after the signal:\n{log.read_text()}")
        stopped_in = time.monotonic() - t0
        time.sleep(1.0)  # what the run started has had its time to leave
        left = [(p, psutil.Process(p).name()) for p in family if _alive(p)]
        assert not left, f"left running: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in family:  # a failed case cleans up after itself, by pid
            if _alive(p):
                psutil.Process(p).kill()
    return code, stopped_in, log.read_text(), out


def assert_stopped(code: int, stopped_in: float, output: str, within_s: float = STOP_WITHIN_S) -> None:
    assert code == 130, output
    assert stopped_in < within_s, f"{stopped_in:.1f} s\n{output}"
    assert "fedhar: interrupted" in output, output  # (Ray may log a line of its own shutdown after it)
    assert "Traceback" not in output, output


def assert_checkpoint_of_finished_rounds(out: Path) -> int:
    saved = read_checkpoint(out / CHECKPOINT)
    assert saved["round"] >= 1
    assert {row["round"] for row in saved["log_rows"]} <= set(range(1, saved["round"] + 1))  # nothing of the round cut
    return saved["round"]


def test_ctrl_c_during_pretraining_inline(tmp_path, cache):
    code, stopped_in, output, out = interrupt(tmp_path, cache, "inline", signal.SIGINT, "pretraining", pretrain_epochs=200)
    assert_stopped(code, stopped_in, output)
    assert not (out / CHECKPOINT).exists()


def test_sigterm_mid_round_inline_then_resume(tmp_path, cache):
    code, stopped_in, output, out = interrupt(tmp_path, cache, "inline", signal.SIGTERM, "mid-round")
    assert_stopped(code, stopped_in, output)
    finished = assert_checkpoint_of_finished_rounds(out)
    import pandas as pd

    kept = pd.read_csv(out / "rounds.csv")["round"].tolist()  # written every round: a stopped run keeps its rounds
    assert kept and kept == list(range(1, len(kept) + 1)) and len(kept) <= finished
    resumed = subprocess.run([sys.executable, "-m", "fedhar", "fl", *TINY, "--pretrain-epochs", "1",
                              "--rounds", str(finished + 1), "--engine", "inline", "--out-dir", str(out), "--resume"],
                             cwd=ROOT, capture_output=True, text=True, timeout=240,
                             env={**os.environ, "FEDHAR_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert len((out / "rounds.csv").read_text().splitlines()) == finished + 2  # header + every round


def test_ctrl_c_between_rounds_inline(tmp_path, cache):
    code, stopped_in, output, out = interrupt(tmp_path, cache, "inline", signal.SIGINT, "between rounds")
    assert_stopped(code, stopped_in, output)
    assert_checkpoint_of_finished_rounds(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig, moment", [(signal.SIGINT, "mid-round"), (signal.SIGTERM, "between rounds"),
                                         (signal.SIGTERM, "mid-round"), (signal.SIGINT, "between rounds")])
def test_signals_on_the_ray_engine(tmp_path, cache, sig, moment):
    """The default engine: Flower's threads and Ray's processes (raylet, GCS, DashboardAgent,
    RuntimeEnvAgent, the actors) all go."""
    code, stopped_in, output, out = interrupt(tmp_path, cache, "ray", sig, moment)
    assert_stopped(code, stopped_in, output)
    assert_checkpoint_of_finished_rounds(out)


@pytest.mark.slow
def test_sigterm_mid_round_flwr(tmp_path, cache):
    code, stopped_in, output, out = interrupt(tmp_path, cache, "flwr", signal.SIGTERM, "mid-round")
    assert_stopped(code, stopped_in, output, within_s=40)  # its SuperLink and app processes: ~15 s when busy
    assert_checkpoint_of_finished_rounds(out)
