"""Run the fedhar Flower app in-process (``fedhar fl``): the same ClientApp and ServerApp
as ``flwr run .``, so errors surface here.

Two engines deliver the ServerApp's messages to the ClientApp:
  ray     Flower's simulation engine (``flwr.simulation.run_simulation``): a local Ray
          instance, clients in Ray actors, ``cpus_per_client`` CPUs each, in parallel.
          About 10 s to start; cannot run inside a Ray task.
  inline  ``simulations.inline``: clients called one after the other in this process, no
          Ray, no threads; fixed node ids, deterministic. See its docstring for the limits
          (timeouts, one process).
  cohort  ``simulations.cohort``: the inline engine, with a round's LoRA / QLoRA clients
          trained and evaluated in groups of up to ``cohort_size`` in one vectorised pass
          over the shared frozen backbone (what it does not cover runs as inline).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from fedhar.console import quiet_flower, verbose
from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.out_dir import releases_out_dir
from simulations.startup import announce, gpus_per_client, prepare_run

ENGINES = ("ray", "inline", "cohort")


@releases_out_dir
def run_inprocess(cfg: FLConfig, cpus_per_client: float = 1.0, engine: str = "ray", address: str = "",
                  cohort_size: int = 32) -> Path:
    """Run one federation; returns the out-dir holding config.json, clients.csv, rounds.csv.

    ``engine``: "ray" (Flower's simulation engine) or "inline" (``simulations.inline``;
    ``cpus_per_client`` does not apply: clients run one at a time) or "cohort"
    (``simulations.cohort``, groups of up to ``cohort_size`` clients). ``address``: the Ray
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
    if engine == "cohort" and cfg.task == "pretrain":  # the whole MAE trains per client: nothing shared to stack
        print("fedhar fl: --task pretrain runs its clients one at a time (inline engine); the cohort engine "
              "stacks LoRA adapters only", flush=True)
        engine = "inline"
    announce(cfg, n_clients, engine)
    t0 = time.perf_counter()
    server_app, client_app = build_server_app(cfg), build_client_app(cfg)
    if engine == "inline":
        from simulations.inline import run_inline

        run_inline(server_app, client_app, n_clients, cfg.to_run_config())
    elif engine == "cohort":
        from simulations.cohort import run_cohort

        run_cohort(server_app, client_app, n_clients, cfg.to_run_config(), fixed=cfg, cohort_size=cohort_size)
    else:
        run_on_ray(server_app, client_app, n_clients, cpus_per_client, address, gpus_per_client(cfg, n_clients))
    return report(cfg, out_dir, time.perf_counter() - t0)


def run_on_ray(server_app, client_app, n_clients: int, cpus_per_client: float, address: str,
               gpus_each: float = 0.0) -> None:
    """Flower's simulation engine, stoppable: Ray is started here, in the main thread (this run's
    own instance unless ``address``) and always shut down on the way out; Flower runs in a thread
    of its own while the main thread only waits, so Ctrl-C / SIGTERM reach fedhar's code, set
    ``rounds.STOP`` for the ServerApp and leave. (Flower's worker threads may stay blocked in
    ``ray.get`` after Ray is stopped: ``fedhar.interrupt.leave`` ends the command without them.)"""
    import ray
    from flwr.simulation import run_simulation

    from fedhar.interrupt import reclaim_sigterm
    from simulations.rounds import POLL_SECONDS, STOP

    quiet_flower()
    STOP.clear()
    failed: list[BaseException] = []

    def simulate() -> None:
        try:
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n_clients,
                           backend_config={"client_resources": {"num_cpus": cpus_per_client,
                                                                 "num_gpus": gpus_each}})
        except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
            failed.append(e)

    try:
        # Flower's RayBackend skips ray.init when Ray is up; its actors need this checkout on their path, as it passes it
        ray.init(**({"address": address} if address else {"address": "local", "num_cpus": os.cpu_count() or 1}),
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}}, include_dashboard=False,
                 # actors' output (library noise) only with --verbose: failures are rows
                 log_to_driver=verbose(), logging_level="INFO" if verbose() else "ERROR")
        reclaim_sigterm()  # ray.init put its own SIGTERM handler (sys.exit) in place of fedhar's
        runner = threading.Thread(target=simulate, name="fedhar-ray-engine", daemon=True)
        runner.start()
        while runner.is_alive():
            runner.join(0.2)
    except KeyboardInterrupt:
        STOP.set()  # the ServerApp leaves at its next poll; the round in flight leaves no checkpoint
        logging.getLogger("flwr").setLevel(logging.CRITICAL)  # its threads' errors while Ray stops under them
        time.sleep(2 * POLL_SECONDS)
        raise
    finally:
        ray.shutdown()
    if failed:
        raise failed[0]


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
