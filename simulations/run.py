"""Run the fedhar Flower app in-process (``fedhar fl``): the same ClientApp and ServerApp
as ``flwr run .``, through ``flwr.simulation.run_simulation`` so errors surface here."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.server_app import default_out_dir


def run_inprocess(cfg: FLConfig, cpus_per_client: float = 1.0) -> Path:
    """Run one federation; returns the out-dir holding config.json, clients.csv, rounds.csv."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    from simulations.client_app import build_client_app
    from simulations.server_app import build_server_app
    from simulations.task import ensure_backbone, federation

    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir()
    cfg = replace(cfg, out_dir=str(out_dir.resolve()))
    # pretrain (or find) the backbone and prepare the data once, before clients start
    cfg = replace(cfg, backbone=str(ensure_backbone(cfg).resolve()))
    n_clients = len(federation(cfg).parts)
    print(f"fedhar fl: {n_clients} clients ({cfg.partition} partition of {cfg.data}), "
          f"{cfg.mode} rank {cfg.rank}, {cfg.strategy}, {cfg.rounds} rounds -> {out_dir}", flush=True)
    t0 = time.perf_counter()
    run_simulation(
        server_app=build_server_app(cfg),
        client_app=build_client_app(cfg),
        num_supernodes=n_clients,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
        },
    )
    rounds_csv = out_dir / "rounds.csv"
    if not rounds_csv.exists():
        raise FedharError(f"the federated run did not finish: no {rounds_csv} (see the log above)")
    rounds = pd.read_csv(rounds_csv)
    if len(rounds) < cfg.rounds:
        raise FedharError(f"only {len(rounds)} of {cfg.rounds} rounds finished (see {out_dir / 'clients.csv'})")
    print(f"\nfedhar fl: finished in {time.perf_counter() - t0:.0f} s. Per round:")
    print(rounds.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nTables: {out_dir / 'rounds.csv'}, {out_dir / 'clients.csv'}; configuration: {out_dir / 'config.json'}")
    return out_dir
