"""What every runner does before a federation starts, in one place.

``fedhar fl`` (inline and Ray engines, simulations/run.py), ``--engine flwr``
(simulations/flwr_launch.py) and ``fedhar deploy`` (simulations/deploy.py) all prepare a run
the same way: paths made absolute (the app's processes may start elsewhere), the out-dir
claimed, the data partitioned (its checks are quick, and give the number of clients), and
the backbone pretrained or found *here*, with progress on this terminal. Its path is written
into the configuration, and so into the run config every process reads: a ClientApp then
loads the checkpoint instead of loading and hashing the pretraining windows on every
message to find the cached one, and the ServerApp never pretrains in its own thread.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from simulations.config import FLConfig


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def absolute_paths(cfg: FLConfig) -> FLConfig:
    """Every path the app reads or writes, made absolute against the caller's directory."""
    from fedhar.data.registry import absolute_readers

    out_dir = Path(cfg.out_dir or default_out_dir()).resolve()
    return replace(cfg, out_dir=str(out_dir), readers=absolute_readers(cfg.readers),
                   data_dir=str(Path(cfg.data_dir).resolve()) if cfg.data_dir else "",
                   backbone=str(Path(cfg.backbone).resolve()) if cfg.backbone else "")


def prepare_run(cfg: FLConfig) -> tuple[FLConfig, int]:
    """(the configuration to run, with absolute paths and the backbone's path; the number
    of clients). Claims the out-dir: an earlier run there is refused unless resume/overwrite."""
    from simulations.out_dir import claim
    from simulations.task import ensure_backbone, federation

    cfg = absolute_paths(cfg)
    claim(Path(cfg.out_dir), cfg.resume, cfg.overwrite, hold_it=True)  # a second run into it: refused now
    n_clients = len(federation(cfg).parts)
    if cfg.task == "pretrain":  # the backbone is what the run makes: --backbone, if any, is where it starts
        if cfg.backbone:
            ensure_backbone(cfg)  # a missing or damaged file is an error now, naming it
        return cfg, n_clients
    return replace(cfg, backbone=str(ensure_backbone(cfg).resolve())), n_clients


def announce(cfg: FLConfig, n_clients: int, engine: str, stream=None) -> None:
    """The line every engine prints before its rounds: what runs, and where its tables go."""
    import sys

    what = "MAE pretraining" if cfg.task == "pretrain" else f"{cfg.mode} rank {cfg.rank}"
    print(f"fedhar fl: {n_clients} clients ({cfg.partition} partition of {cfg.data}), "
          f"{what}, {cfg.strategy}, {cfg.rounds} rounds, {engine} engine -> {cfg.out_dir}",
          file=stream or sys.stdout, flush=True)


def gpus_per_client(cfg: FLConfig, n_clients: int) -> float:
    """The share of a GPU each client's Ray actor reserves: the clients share one GPU when
    --device is cuda (without a share Ray hides the GPU from the actor), none on the CPU."""
    return 0.0 if cfg.device == "cpu" else 1.0 / max(1, n_clients)
