"""`fedhar fl`: one federated run, in-process. Every FLConfig field is an option."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields

from simulations.config import FLConfig

HELP = {
    "data": "dataset(s) the clients hold, joined by '+' (default: synthetic)",
    "partition": "one client per 'dataset', per 'subject', or 'dirichlet' label skew",
    "mode": "lora | qlora | full",
    "strategy": "fedavg/fedit | ffa | fedsa | fedex | flora | hetlora | fedprox | fedavgm | fedadam | fedyogi | fedadagrad",
    "client_ranks": "per-client LoRA ranks by partition id, e.g. 4,8,16 (flora, hetlora)",
    "client_modes": "per-client modes by partition id, e.g. lora,qlora",
    "resume": "continue a crashed or stopped run from OUT_DIR/checkpoint.pkl (it must be there)",
    "overwrite": "replace the earlier run in OUT_DIR (without it, an OUT_DIR holding a run is an error)",
    "inject_failure": "fault injection for tests: pid:round[:raise|nan],...",
    "server_momentum": "fedavgm: server momentum (Flower's default 0 would make it FedAvg)",
    "min_train_replies": "a round with fewer replies leaves the global adapters unchanged",
    "pretrain_data": "what the backbone is pretrained on: 'synthetic' (a separate population) or datasets joined by '+'",
    "backbone": "an MAE checkpoint to use instead of pretraining",
    "out_dir": "where the run's tables go (default runs/<time>)",
    "test_fraction": "each client's own test share (subject-disjoint for partition=dataset, else the "
    "last windows in time order)",
    "server_test_fraction": "> 0: per dataset, the server holds out the test subjects of the centralised "
    "LODO baseline (same seed, train fraction 1 - this) and evaluates the global model on them; "
    "clients get the remaining subjects only (0 = off)",
    "normalise": "z-normalisation statistics: 'dataset' (each dataset's training windows over all "
    "clients) or 'client' (each client's own training windows)",
    "head": "'shared' (averaged), 'local' (never leaves its client, sized to its labels) or 'auto' "
    "(local when some client's training labels miss a class of the federation)",
    "heldout_data": "datasets no client holds, joined by '+' ('synthetic' = a separately seeded draw): "
    "the server evaluates the global adapters on their LODO test subjects every round",
    "probe_epochs": "epochs of the head-only probe (frozen global encoder) used for held-out data "
    "when the head is local or its labels leave the federation's space",
    "server_eval_every": "server-side evaluation every N rounds (and always after the last)",
    "arm": "federated; centralised (one client with the union of the clients' training windows, all else "
    "equal: the upper bound); local (each client alone, never aggregated: the lower bound)",
}


def add_config_options(parser) -> None:
    """One option per FLConfig field (``--rank``, ``--resume/--no-resume``, ...)."""
    for f in fields(FLConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=HELP.get(f.name, " "))
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=HELP.get(f.name, " "))


def config_from_args(args) -> FLConfig:
    return FLConfig(**{f.name: getattr(args, f.name) for f in fields(FLConfig)})


def register(commands) -> None:
    p = commands.add_parser(
        "fl",
        help="run a federated LoRA/QLoRA simulation (Flower, in-process)",
        description="Federated fine-tuning of adapters on a frozen MAE backbone. Defaults are the "
        "embedded default: synthetic data, one client per synthetic domain, LoRA rank 8, FedAvg.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_options(p)
    p.add_argument("--engine", choices=("ray", "inline", "flwr"), default="ray",
                   help="ray: Flower's simulation engine (Ray actors, parallel); inline: clients called one "
                   "after the other in this process, no Ray (simulations/inline.py); flwr: `flwr run .` "
                   "through a local SuperLink started and stopped here (simulations/flwr_launch.py)")
    p.add_argument("--address", default="",
                   help="ray engine: the Ray cluster to run on (e.g. auto, host:6379); default: a Ray instance "
                   "of this run's own, never one already running on the machine")
    p.set_defaults(run=cmd_fl)


def cmd_fl(args) -> int:
    from simulations.run import run_inprocess

    cfg = config_from_args(args)
    if cfg.resume and not cfg.out_dir:
        from fedhar.errors import FedharError

        raise FedharError("--resume needs the --out-dir of the run to continue")
    if args.engine == "flwr":
        from simulations.flwr_launch import launch
        from simulations.run import report

        t0 = time.perf_counter()
        report(cfg, launch(cfg), time.perf_counter() - t0)
        return 0
    if args.address and args.engine != "ray":
        from fedhar.errors import FedharError

        raise FedharError(f"--address is for the ray engine, not --engine {args.engine}")
    run_inprocess(cfg, engine=args.engine, address=args.address)
    return 0
