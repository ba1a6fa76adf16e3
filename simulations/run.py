"""Run the fedhar Flower app in-process (``fedhar fl``): the same ClientApp and ServerApp
as ``flwr run .``, so errors surface here.

Two engines deliver the ServerApp's messages to the ClientApp:
  ray     Flower's simulation engine (``flwr.simulation.run_simulation``): a local Ray
          instance, clients in Ray actors, ``cpus_per_client`` CPUs each, in parallel.
          About 10 s to start; cannot run inside a Ray task.
  inline  ``simulations.inline``: clients called one after the other in this process, no
          Ray, no threads; fixed node ids, deterministic. See its docstring for the limits
          (timeouts, one process).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pandas as pd

from fedhar.console import quiet_flower, verbose
from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.startup import prepare_run

ENGINES = ("ray", "inline")


def run_inprocess(cfg: FLConfig, cpus_per_client: float = 1.0, engine: str = "ray", address: str = "") -> Path:
    """Run one federation; returns the out-dir holding config.json, clients.csv, rounds.csv.

    ``engine``: "ray" (Flower's simulation engine) or "inline" (``simulations.inline``;
    ``cpus_per_client`` does not apply: clients run one at a time). ``address``: the Ray
    cluster to run on; "" starts a Ray instance of this run's own (never one already running).
    Ctrl-C / SIGTERM stop the run within a second or so (``rounds.STOP``)."""
    if engine not in ENGINES:
        raise FedharError(f"engine must be one of {ENGINES}, got {engine!r}")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    from simulations.client_app import build_client_app
    from simulations.server_app import build_server_app

    cfg, n_clients = prepare_run(cfg)
    out_dir = Path(cfg.out_dir)
    if cfg.arm == "local":  # nothing is aggregated: no Flower run (simulations/local_only.py)
        from simulations.local_only import run_local_only

        rows = run_local_only(cfg, out_dir)
        summary = rows.groupby("set")[["accuracy", "macro_f1"]].agg(["mean", "std", "count"])
        print(f"\nfedhar fl --arm local: each client's own model, mean over clients:\n{summary.to_string()}\n"
              f"Table: {out_dir / 'local.csv'}", flush=True)
        return out_dir
    what = "MAE pretraining" if cfg.task == "pretrain" else f"{cfg.mode} rank {cfg.rank}"
    print(f"fedhar fl: {n_clients} clients ({cfg.partition} partition of {cfg.data}), "
          f"{what}, {cfg.strategy}, {cfg.rounds} rounds, {engine} engine -> {out_dir}", flush=True)
    t0 = time.perf_counter()
    server_app, client_app = build_server_app(cfg), build_client_app(cfg)
    if engine == "inline":
        from simulations.inline import run_inline

        run_inline(server_app, client_app, n_clients, cfg.to_run_config())
    else:
        from flwr.simulation import run_simulation

        from simulations.rounds import STOP

        quiet_flower()
        ray_init = {"address": address} if address else {"address": "local", "num_cpus": os.cpu_count() or 1}
        STOP.clear()
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=n_clients,
                backend_config={
                    "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                    "init_args": {**ray_init, "include_dashboard": False,
                                  # actors' output (library noise) only with --verbose: failures are rows
                                  "log_to_driver": verbose(), "logging_level": "INFO" if verbose() else "ERROR"},
                },
            )
        except KeyboardInterrupt:  # the ServerApp runs in a thread of its own: tell it to stop
            STOP.set()
            raise
        except SystemExit:  # ray.init replaces our SIGTERM handler with one that calls sys.exit
            STOP.set()
            raise KeyboardInterrupt("SIGTERM") from None
    return report(cfg, out_dir, time.perf_counter() - t0)


def report(cfg: FLConfig, out_dir: Path, seconds: float, name: str = "fedhar fl", stream=None,
           tables_note: str = "", live: bool = True) -> Path:
    """Check that every round finished and say where the tables are (any engine, or a deployment).
    live=False: the rounds ran in another process, so their lines are printed here."""
    from simulations.progress import round_line

    stream = stream or sys.stdout
    rounds_csv = out_dir / "rounds.csv"
    if not rounds_csv.exists():
        raise FedharError(f"the federated run did not finish: no {rounds_csv} (see the log above)")
    rounds = pd.read_csv(rounds_csv)
    if len(rounds) < cfg.rounds:
        raise FedharError(f"only {len(rounds)} of {cfg.rounds} rounds finished (see {out_dir / 'clients.csv'})")
    if not live:
        for row in rounds.to_dict("records"):
            print(round_line(row, cfg.rounds), file=stream)
    print(f"{name}: finished in {seconds:.0f} s", file=stream)
    made = (f"backbone: {out_dir / 'backbone.safetensors'} (for --backbone)" if cfg.task == "pretrain"
            else f"model: {out_dir / 'model'}")
    print(tables_note or f"tables: {rounds_csv} (every column per round), {out_dir / 'clients.csv'}; "
          f"{made}; configuration: {out_dir / 'config.json'}", file=stream, flush=True)
    return out_dir
