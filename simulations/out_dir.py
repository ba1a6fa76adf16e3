"""A run's out-dir: never destroyed by accident.

Checked before any work starts (``claim``), by every runner (``fedhar fl`` on any engine,
``fedhar deploy``) and again by the ServerApp (a by-hand ``flwr run``):
  - an out-dir that is a file or not writable is an error naming it;
  - an out-dir that holds an earlier run (its tables or checkpoint) is an error unless
    ``--resume`` (continue it) or ``--overwrite`` (its run files are removed first);
  - ``--resume`` continues from an intact checkpoint there; without one it starts at round 1
    only where there is nothing to lose (no earlier tables), never over the earlier tables.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedhar.errors import FedharError
from simulations.rounds import CHECKPOINT, read_checkpoint

#: what a run writes into its out-dir (and --overwrite removes)
RUN_FILES = ("config.json", "clients.csv", "rounds.csv", "drift.csv", "inexactness.csv", "local.csv", CHECKPOINT, "done")


def earlier_run(out_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (out_dir / name).exists()]


def claim(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Make ``out_dir`` ready for a run, or raise FedharError saying why it cannot be used."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FedharError(f"--out-dir {out_dir} is a file, not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise FedharError(f"--out-dir {out_dir}: cannot write there ({e.strerror})") from None
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
