"""`fedhar fl`: one federated run, in-process. Every FLConfig field is an option."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import fields, replace
from pathlib import Path

from fedhar.data.cli import add_readers_option, add_synthetic_options
from fedhar.options import choice, name_list, number_list
from simulations.config import FLConfig, run_config_key

#: FLConfig fields that work as options but stay out of --help (they exist for the tests)
HIDDEN = ("inject_failure",)


def _choices() -> dict:
    """The enumerated fields and their names (also the did-you-mean vocabulary)."""
    from fedhar.data.registry import dataset_names
    from simulations.config import ARMS, HEADS, MODES, NORMALISE, PARTITIONS

    return {"partition": PARTITIONS, "mode": MODES, "normalise": NORMALISE, "head": HEADS, "arm": ARMS,
            "data": dataset_names, "heldout_data": dataset_names, "pretrain_data": dataset_names}


def strategy_help(default: str = "fedavg") -> str:
    """--strategy's help: one line per named rule with its summary (strategies/registry.py)."""
    from strategies.registry import describe

    rules = describe()
    width = max(len(name) for name, _ in rules)
    lines = [f"  {name:<{width}}  {summary}" for name, summary in rules]
    return "\n".join([f"aggregation rule (default: {default}): a name below, or module:Class (a strategies.base.Rule "
                      "subclass)",
                      *lines])


def strategy_name(text: str) -> str:
    """An argparse type: a rule name or module:Class that resolves (did-you-mean otherwise)."""
    from fedhar.errors import FedharError
    from strategies.registry import check_strategy

    try:
        return check_strategy(text)
    except FedharError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


strategy_name.__name__ = "strategy"  # argparse names the type in its own messages


def add_config_options(parser) -> None:
    """One option per FLConfig field (``--rank``, ``--resume/--no-resume``, ...); where the
    Flower run config names it otherwise, that name too (``--rounds`` = ``--num-server-rounds``)."""
    choices = _choices()
    for f in fields(FLConfig):
        flags = dict.fromkeys([f"--{f.name.replace('_', '-')}", f"--{run_config_key(f)}"])
        if f.name in HIDDEN:
            parser.add_argument(*flags, type=type(f.default), default=f.default, help=argparse.SUPPRESS)
        elif f.name == "strategy":
            parser.add_argument(*flags, type=strategy_name, default=f.default, metavar="NAME|MODULE:CLASS",
                                help=lambda default=f.default: strategy_help(default))  # on --help only
        elif isinstance(f.default, bool):
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata["help"])
        elif callable(choices.get(f.name)):  # dataset lists: checked by FLConfig, after --readers registered theirs
            parser.add_argument(*flags, type=name_list("dataset", None, as_text=True),
                                default=f.default, metavar="NAME[,NAME...]", help=f.metadata["help"])
        elif f.name in choices:
            parser.add_argument(*flags, type=choice(f.name.replace("_", "-"), choices[f.name]),
                                choices=choices[f.name], default=f.default, help=f.metadata["help"])
        else:
            kind = positive if f.metadata.get("parse") == "positive" else type(f.default)
            parser.add_argument(*flags, type=kind, default=f.default, help=f.metadata["help"])


def positive(text: str) -> float:
    """An argparse type: a number > 0 (for options whose default 0 means off)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text} (leave the option out to turn it off)")
    return value


positive.__name__ = "number"


def config_from_args(args) -> FLConfig:
    return FLConfig(**{f.name: getattr(args, f.name) for f in fields(FLConfig)})


def register(commands) -> None:
    p = commands.add_parser(
        "fl",
        help="run a federated LoRA/QLoRA simulation (Flower; default engine: Ray)",
        description="Federated fine-tuning of adapters on a frozen MAE backbone. Defaults are the "
        "embedded default: synthetic data, one client per synthetic domain, LoRA rank 8, FedAvg.",
    )
    add_config_options(p)
    p.add_argument("--engine", choices=("ray", "inline", "cohort", "flwr"), default="ray",
                   help="ray: Flower's simulation engine (Ray actors, parallel); inline: clients called one "
                   "after the other in this process, no Ray (simulations/inline.py); cohort: as inline, but a "
                   "round's LoRA/QLoRA clients trained and evaluated in groups in one vectorised pass "
                   "(simulations/cohort.py); flwr: `flwr run .` "
                   "through a local SuperLink started and stopped here (simulations/flwr_launch.py)")
    p.add_argument("--seeds", type=number_list(int), metavar="SEED[,SEED...]",
                   help="one run per seed, each in OUT_DIR/seed-N (instead of --seed)")
    p.add_argument("--address", default="",
                   help="ray engine: the Ray cluster to run on (e.g. auto, host:6379); default: a Ray instance "
                   "of this run's own, never one already running on the machine")
    p.add_argument("--cohort-size", type=int, default=32, metavar="N",
                   help="cohort engine: clients trained or evaluated together in one pass (default 32)")
    p.add_argument("--cpus-per-client", type=float, default=1.0, metavar="X",
                   help="ray engine: Ray CPUs per client (Flower's client_resources num_cpus), so Ray CPUs / X "
                   "actors train clients in parallel (default 1: one actor per CPU). Each actor is a process "
                   "with torch and peft (~750 MiB): the machine's CPU count gives one actor, its clients one "
                   "after the other. Torch threads per client stay --threads")
    p.set_defaults(run=cmd_fl)

    p = commands.add_parser(
        "evaluate", help="score a saved federated model (OUT_DIR/model) on a dataset",
        description="Load a saved model (peft adapters, head, backbone; see fedhar/model/saved.py) "
        "and score it on every window of a dataset fedhar reads, z-normalised with that dataset's own "
        "statistics. Windows of activities the head does not know count as errors.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="a model folder: a federated run's OUT_DIR/model, or a LODO run's OUT_DIR/models/RUN")
    p.add_argument("--data", required=True, help="the dataset to score on (checked after --readers)")
    add_readers_option(p)
    p.add_argument("--client", help="add this client's local parts (FedSA's B, a local head)")
    p.add_argument("--data-dir", type=Path, help="folder holding the datasets (default: the search path)")
    add_synthetic_options(p)
    p.set_defaults(run=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from fedhar.data.cli import synthetic_config
    from fedhar.data.registry import load_readers_and_check
    from fedhar.model.saved import score

    load_readers_and_check(args.readers, {"data": [args.data]})
    m = score(args.model_dir, args.data, args.data_dir, args.client,
              synthetic=synthetic_config(args) if args.data == "synthetic" else None)
    print(f"{m['data']}: accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}  "
          f"({m['windows']} windows, {m['out_of_space']} of activities the head does not know)")
    return 0


def cmd_fl(args) -> int:
    from fedhar.errors import FedharError

    cfg = config_from_args(args)
    if cfg.resume and not cfg.out_dir:
        raise FedharError("--resume needs the --out-dir of the run to continue")
    if args.address and args.engine != "ray":
        raise FedharError(f"--address is for the ray engine, not --engine {args.engine}")
    if args.cohort_size < 1:
        raise FedharError(f"--cohort-size must be >= 1, got {args.cohort_size}")
    check_cpus_per_client(args)
    if args.seeds is None:
        run_one(cfg, args.engine, args.address, args.cohort_size, cpus_per_client=args.cpus_per_client)
        return 0
    if not args.seeds or min(args.seeds) < 0:
        raise FedharError(f"--seeds must be one or more seeds >= 0, got {','.join(map(str, args.seeds))}")
    from simulations.startup import default_out_dir

    root = Path(cfg.out_dir or default_out_dir())
    for seed in args.seeds:  # one federation per seed, as `fedhar lodo --seeds` runs one per seed
        run_one(replace(cfg, seed=seed, out_dir=str(root / f"seed-{seed}")), args.engine, args.address,
                args.cohort_size, cpus_per_client=args.cpus_per_client)
    return 0


def check_cpus_per_client(args) -> None:
    """--cpus-per-client: > 0, for the ray engine, and (on this run's own Ray) at most the CPUs it has."""
    from fedhar.errors import FedharError

    x = args.cpus_per_client
    if not x > 0:
        raise FedharError(f"--cpus-per-client must be > 0, got {x:g}")
    if x != 1.0 and args.engine != "ray":
        raise FedharError(f"--cpus-per-client is for the ray engine, not --engine {args.engine}")
    cpus = os.cpu_count() or 1
    if not args.address and x > cpus:  # Flower would find room for no actor
        raise FedharError(f"--cpus-per-client {x:g} is more than the {cpus} CPUs of this run's Ray: no client could run")


def run_one(cfg: FLConfig, engine: str, address: str, cohort_size: int, cpus_per_client: float = 1.0) -> None:
    if engine == "flwr":
        from simulations.flwr_launch import launch
        from simulations.run import report

        t0 = time.perf_counter()
        report(cfg, launch(cfg), time.perf_counter() - t0)  # launch printed the round lines
        return
    from simulations.run import run_inprocess

    run_inprocess(cfg, engine=engine, address=address, cohort_size=cohort_size, cpus_per_client=cpus_per_client)
