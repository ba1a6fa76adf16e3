"""A run's out-dir: never destroyed by accident.

Checked before any work starts (``claim``), by every runner (``fedhar fl`` on any engine,
``fedhar deploy``) and again by the ServerApp (a by-hand ``flwr run``):
  - an out-dir that is a file or not writable is an error naming it;
  - an out-dir that holds an earlier run (its tables or checkpoint) is an error unless
    ``--resume`` (continue it) or ``--overwrite`` (its run files are removed first);
  - ``--resume`` continues from an intact checkpoint there; without one it starts at round 1
    only where there is nothing to lose (no earlier tables), never over the earlier tables;
  - a runner (``hold_it=True``) holds the out-dir while it runs (an flock on
    ``.fedhar-run.lock``, which names its pid; released when the runner returns or raises,
    ``releases_out_dir``, or its process ends): a second run started into it at the same time
    is refused at once, before its pretraining, not when it first writes a table. (The
    ServerApp's own check does not hold it: it runs inside the runner's process, or under
    ``flwr run``.)
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from fedhar.errors import FedharError
from simulations.rounds import CHECKPOINT, read_checkpoint

#: what a run writes into its out-dir (and --overwrite removes)
RUN_FILES = ("config.json", "clients.csv", "rounds.csv", "drift.csv", "inexactness.csv", "local.csv", CHECKPOINT, "done")


LOCK = ".fedhar-run.lock"
_HELD: dict[Path, int] = {}  # out-dirs this process holds -> the lock file's descriptor


def hold(out_dir: Path) -> None:
    """Hold ``out_dir`` for this process (until it ends), or raise FedharError if another run holds it."""
    key = out_dir.resolve()
    if key in _HELD:
        return
    try:
        import fcntl
    except ImportError:  # (Windows: no lock; the tables' check still refuses a second run, later)
        return
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 200).decode(errors="replace").strip()
        os.close(fd)
        raise FedharError(f"--out-dir {out_dir} is in use by another run ({owner or key / LOCK}): wait for it to "
                          "end, or give another --out-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    _HELD[key] = fd


P = ParamSpec("P")
R = TypeVar("R")


def releases_out_dir(runner: Callable[P, R]) -> Callable[P, R]:
    """A runner (``run_inprocess``, ``launch``, ``run_local``) releases the out-dirs it took when
    it returns or raises: a notebook that ran a federation does not keep its out-dir from others."""
    @functools.wraps(runner)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        before = set(_HELD)
        try:
            return runner(*args, **kwargs)
        finally:
            for key in set(_HELD) - before:
                os.close(_HELD.pop(key))
    return run


def earlier_run(out_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (out_dir / name).exists()]


def claim(out_dir: Path, resume: bool, overwrite: bool, hold_it: bool = False) -> None:
    """Make ``out_dir`` ready for a run, or raise FedharError saying why it cannot be used;
    hold_it: hold it for this process first (``hold``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FedharError(f"--out-dir {out_dir} is a file, not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise FedharError(f"--out-dir {out_dir}: cannot write there ({e.strerror})") from None
    if hold_it:
        hold(out_dir)
    found = earlier_run(out_dir)
    if resume:
        checkpoint = out_dir / CHECKPOINT
        if checkpoint.exists():
            read_checkpoint(checkpoint)  # a damaged checkpoint is an error now, not after pretraining
        elif found:
            raise FedharError(f"--resume: no checkpoint {checkpoint}; the earlier tables there "
                              f"({', '.join(found)}) are kept. Start again with --overwrite")
    elif found:
        if not overwrite:
            raise FedharError(f"--out-dir {out_dir} holds an earlier run ({', '.join(found)}): pass --resume to "
                              f"continue it or --overwrite to replace it")
        for name in found:
            os.unlink(out_dir / name)
