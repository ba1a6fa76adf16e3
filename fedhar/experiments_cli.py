"""`fedhar pretrain` and `fedhar lodo`: the centralised experiments."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fedhar.data.cli import add_synthetic_options, synthetic_config
from fedhar.data.registry import SYNTHETIC
from fedhar.errors import FedharError


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def register(commands) -> None:
    p = commands.add_parser(
        "pretrain", help="pretrain the MAE backbone (cached, resumable)",
        description="Masked-autoencoder pretraining on harmonised windows. An identical finished "
        "checkpoint (same data fingerprint and settings) is reused; an interrupted one resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", type=_csv(str), default=(SYNTHETIC,), help="datasets to pretrain on, comma-separated")
    p.add_argument("--exclude", type=_csv(str), default=(), help="datasets (or synthetic domains) to leave out")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pretrain-seed", type=int, default=0, help="seed of initialisation and masking")
    p.add_argument("--out", type=Path, help="folder for the checkpoint (default ~/.cache/fedhar/backbones)")
    p.add_argument("--data-dir", type=Path)
    add_synthetic_options(p)
    p.set_defaults(run=cmd_pretrain)

    p = commands.add_parser(
        "lodo", help="Leave-One-Dataset-Out centralised baseline (full / lora / qlora)",
        description="For each held-out dataset: pretrain on the others (cached), fine-tune on a "
        "subject-disjoint share of it, evaluate on the rest. Rows are appended to OUT/runs.csv as "
        "runs finish; re-running the same command resumes, and a wider one extends the table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--datasets", type=_csv(str), required=True,
                   help="the study's datasets; 'synthetic' stands for its domains")
    p.add_argument("--held-out", type=_csv(str), default=(), help="hold out only these (default: each in turn)")
    p.add_argument("--backbones", type=_csv(str), default=("other",),
                   help="what the frozen backbone is pretrained on: none (random init, the control), synthetic, "
                   "other (the other datasets, same people excluded), other+synthetic; comma-separated")
    p.add_argument("--pretrain-pool", type=_csv(str), default=(),
                   help="datasets used only for pretraining (never held out), e.g. hapt")
    p.add_argument("--modes", type=_csv(str), default=("full", "lora", "qlora"),
                   help="full, lora, qlora, and probe (head only on the frozen backbone: a diagnostic)")
    p.add_argument("--ranks", type=_csv(int), default=(16,), help="LoRA ranks (rank ablation)")
    p.add_argument("--train-fractions", type=_csv(float), default=(0.7,), help="share of subjects to train on (few-shot)")
    p.add_argument("--seeds", type=_csv(int), default=(0,))
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs")
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--split", choices=("random", "published"), default="random")
    p.add_argument("--synthetic-domains", type=int, default=4)
    p.add_argument("--synthetic-subjects", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch's default)")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for runs.csv, table.md, plan.json")
    p.set_defaults(run=cmd_lodo)


def check_options(args, at_least_one=(), non_negative=(), positive=(), fractions=(), ranks=()) -> None:
    """Option values checked before any work starts; an error names the option."""
    import math

    def values(name):
        value = getattr(args, name)
        return list(value) if isinstance(value, (list, tuple)) else [value]

    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    for name in at_least_one:
        if any(v < 1 for v in values(name)):
            raise FedharError(f"{flag(name)} must be >= 1, got {getattr(args, name)}")
    for name in non_negative:
        if any(v < 0 for v in values(name)):
            raise FedharError(f"{flag(name)} must be >= 0, got {getattr(args, name)}")
    for name in positive:
        if any(not (math.isfinite(v) and v > 0) for v in values(name)):
            raise FedharError(f"{flag(name)} must be a finite number > 0, got {getattr(args, name)}")
    for name in fractions:
        if any(not 0 < v < 1 for v in values(name)):
            raise FedharError(f"{flag(name)} must be in (0, 1), got {getattr(args, name)}")
    from simulations.config import MAX_RANK

    for name in ranks:
        if any(not 1 <= v <= MAX_RANK for v in values(name)):
            raise FedharError(f"{flag(name)}: a LoRA rank must be in 1..{MAX_RANK}, got {getattr(args, name)}")


def cmd_pretrain(args) -> int:
    from fedhar.data import WindowSet, load
    from fedhar.model.mae import MAEConfig
    from fedhar.pretrain import PretrainConfig, pretrain

    check_options(args, at_least_one=("epochs", "batch_size"), non_negative=("pretrain_seed",), positive=("lr",))
    parts = []
    for name in args.datasets:
        synth = synthetic_config(args) if name == SYNTHETIC else None
        ws = load(name, args.data_dir, synthetic=synth, progress=True).windows
        keep = ~__import__("numpy").isin(ws.dataset, list(args.exclude))
        parts.append(ws.subset(keep))
    windows = WindowSet.concat(parts)
    if not len(windows):
        raise FedharError("nothing left to pretrain on after --exclude")
    cfg = PretrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.pretrain_seed,
                         model=MAEConfig())
    path = pretrain(windows, cfg, args.out)
    print(path)
    return 0


def cmd_lodo(args) -> int:
    from fedhar.lodo import LodoPlan, run_lodo

    check_options(args, at_least_one=("epochs", "pretrain_epochs", "synthetic_domains", "synthetic_subjects"),
                  non_negative=("seeds", "threads"), fractions=("train_fractions",), ranks=("ranks",))
    unknown = sorted(set(args.held_out) - set(args.datasets))
    if unknown:
        raise FedharError(f"--held-out {','.join(unknown)}: not among --datasets {','.join(args.datasets)}")
    plan = LodoPlan(
        datasets=args.datasets, held_out=args.held_out, backbones=args.backbones,
        pretrain_pool=args.pretrain_pool, modes=args.modes, ranks=args.ranks,
        train_fractions=args.train_fractions, seeds=args.seeds, epochs=args.epochs,
        pretrain_epochs=args.pretrain_epochs, split=args.split, data_dir=str(args.data_dir or ""),
        synthetic_domains=args.synthetic_domains, synthetic_subjects=args.synthetic_subjects,
        threads=args.threads,
    )
    from fedhar.finetune import MODES
    from fedhar.lodo import BACKBONES

    for mode in plan.modes:
        if mode not in MODES:
            raise FedharError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    for kind in plan.backbones:
        if kind not in BACKBONES:
            raise FedharError(f"unknown backbone {kind!r}: choose from {', '.join(BACKBONES)}")
    try:
        run_lodo(plan, args.out, command="fedhar " + shlex.join(sys.argv[1:]))
    except ValueError as e:
        raise FedharError(str(e)) from None
    print((args.out / "table.md").read_text())
    return 0
