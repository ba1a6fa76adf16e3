"""`fedhar pretrain` and `fedhar lodo`: the centralised experiments."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from fedhar.data.cli import add_readers_option, add_synthetic_options, synthetic_config
from fedhar.data.registry import SYNTHETIC, dataset_names
from fedhar.errors import FedharError
from fedhar.options import MAX_RANK, check_device, name_list, number_list


def _lodo():  # imported when an option needs its names: torch makes `fedhar --help` slow
    import fedhar.lodo

    return fedhar.lodo


def _finetune():
    import fedhar.finetune

    return fedhar.finetune


def register(commands) -> None:
    p = commands.add_parser(
        "pretrain", help="pretrain the MAE backbone (cached, resumable)",
        description="Masked-autoencoder pretraining on harmonised windows. An identical finished "
        "checkpoint (same data fingerprint and settings) is reused; an interrupted one resumes.")
    p.add_argument("--data", type=name_list("dataset", dataset_names), default=(SYNTHETIC,),
                   metavar="NAME[,NAME...]", help="datasets to pretrain on, comma-separated")
    p.add_argument("--exclude", type=name_list("dataset or synthetic domain"), default=(),
                   metavar="NAME[,NAME...]", help="datasets (or synthetic domains) to leave out")
    p.add_argument("--epochs", type=int, default=30, help="pretraining epochs")
    p.add_argument("--batch-size", type=int, default=128, help="pretraining batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (AdamW)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and masking")
    p.add_argument("--out-dir", type=Path,
                   help="folder for the checkpoint (default: the backbone cache, ~/.cache/fedhar/backbones)")
    p.add_argument("--data-dir", type=Path, help="folder holding the datasets (default: the search path)")
    add_synthetic_options(p)
    p.set_defaults(run=cmd_pretrain)

    p = commands.add_parser(
        "lodo", help="Leave-One-Dataset-Out centralised baseline (full / lora / qlora)",
        description="For each held-out dataset: pretrain on the others (cached), fine-tune on a "
        "subject-disjoint share of it, evaluate on the rest. Rows are appended to OUT_DIR/runs.csv as "
        "runs finish; re-running the same command resumes, and a wider one extends the table.")
    p.add_argument("--data", type=name_list("dataset"), required=True, metavar="NAME[,NAME...]",
                   help="the study's datasets; 'synthetic' stands for its domains (checked after --readers)")
    add_readers_option(p)
    p.add_argument("--heldout-data", type=name_list("dataset or synthetic domain"), default=(),
                   metavar="NAME[,NAME...]", help="hold out only these (default: each dataset in turn)")
    p.add_argument("--backbones", type=name_list("backbone", lambda: _lodo().BACKBONES, plus=False),
                   default=("other",), metavar="KIND[,KIND...]",
                   help="what the frozen backbone is pretrained on: none (random init, the control), synthetic, "
                   "other (the other datasets, same people excluded), other+synthetic, file (--backbone PATH); "
                   "comma-separated")
    p.add_argument("--pretrain-pool", type=name_list("dataset"), default=(), metavar="NAME[,NAME...]",
                   help="datasets used only for pretraining (never held out), e.g. hapt")
    p.add_argument("--modes", type=name_list("mode", lambda: _finetune().MODES), default=("full", "lora", "qlora"),
                   metavar="MODE[,MODE...]",
                   help="full, lora, qlora, and probe (head only on the frozen backbone: a diagnostic)")
    p.add_argument("--ranks", type=number_list(int), default=(16,), help="LoRA ranks (rank ablation)")
    p.add_argument("--train-fractions", type=number_list(float), default=(0.7,),
                   help="share of subjects to train on (few-shot)")
    p.add_argument("--seeds", type=number_list(int), default=(0,), help="seeds, comma-separated: one run each")
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs")
    p.add_argument("--pretrain-epochs", type=int, default=30, help="MAE pretraining epochs (cached)")
    p.add_argument("--split", choices=("random", "published"), default="random",
                   help="subject split: seeded random, or the dataset's published one")
    add_synthetic_options(p)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="where to fine-tune: cpu (default) or cuda[:N]")
    p.add_argument("--backbone", type=Path, metavar="PATH",
                   help="a finished MAE checkpoint (e.g. OUT_DIR/backbone.safetensors of `fedhar fl --task pretrain`) "
                   "as backbone kind 'file' (the default --backbones then); a run whose test subjects it saw is refused")
    p.add_argument("--backbone-file", action="append", default=[], metavar="HELD_OUT=PATH",
                   help="use this finished checkpoint (with its .json) as HELD_OUT's 'other' backbone instead of "
                   "pretraining (e.g. where the pretraining data is absent); refused if it saw HELD_OUT's people")
    p.add_argument("--windows-file", action="append", default=[], metavar="NAME=PATH.npz",
                   help="read NAME's windows from this prepared cache file (with its .json; checksum checked) "
                   "instead of the raw recordings")
    p.add_argument("--data-dir", type=Path, help="folder holding the datasets (default: the search path)")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="folder of the study: runs.csv gets one row per finished run (with its code, device, threads), "
                   "appended as runs finish; table.md summarises it and plan.json keeps the commands. Re-running the "
                   "same command with the same folder resumes; a wider one extends the table. python -m "
                   "fedhar.lodo_report reads every runs.csv under a folder and pairs only rows of one batch (same code, "
                   "device, threads, epochs, backbone): run all arms of a comparison together")
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
    for name in ranks:
        if any(not 1 <= v <= MAX_RANK for v in values(name)):
            raise FedharError(f"{flag(name)}: a LoRA rank must be in 1..{MAX_RANK}, got {getattr(args, name)}")


def cmd_pretrain(args) -> int:
    from fedhar.data import WindowSet, load
    from fedhar.model.mae import MAEConfig
    from fedhar.pretrain import PretrainConfig, pretrain

    check_options(args, at_least_one=("epochs", "batch_size"), non_negative=("seed",), positive=("lr",))
    parts = []
    for name in args.data:
        synth = synthetic_config(args) if name == SYNTHETIC else None
        ws = load(name, args.data_dir, synthetic=synth, progress=True).windows
        keep = ~__import__("numpy").isin(ws.dataset, list(args.exclude))
        parts.append(ws.subset(keep))
    windows = WindowSet.concat(parts)
    if not len(windows):
        raise FedharError("nothing left to pretrain on after --exclude")
    cfg = PretrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         model=MAEConfig())
    path = pretrain(windows, cfg, args.out_dir)
    print(path)
    return 0


def cmd_lodo(args) -> int:
    from fedhar.data.registry import load_readers_and_check
    from fedhar.lodo import LodoPlan, run_lodo

    load_readers_and_check(args.readers, {"data": args.data, "pretrain-pool": args.pretrain_pool})
    check_options(args, at_least_one=("epochs", "pretrain_epochs", "synthetic_domains", "synthetic_subjects"),
                  non_negative=("seeds", "threads"), fractions=("train_fractions",), ranks=("ranks",))
    known = set(args.data) | ({f"synthetic-d{i}" for i in range(args.synthetic_domains)} if SYNTHETIC in args.data else set())
    unknown = sorted(set(args.heldout_data) - known)
    if unknown:
        raise FedharError(f"--heldout-data {','.join(unknown)}: not among --data {','.join(args.data)}")
    backbones = args.backbones
    if args.backbone is not None:
        if not args.backbone.is_file():
            raise FedharError(f"--backbone {args.backbone}: no such file")
        backbones = ("file",) if backbones == ("other",) else backbones
    if "file" in backbones and args.backbone is None:
        raise FedharError("--backbones file needs --backbone PATH")
    plan = LodoPlan(
        datasets=args.data, held_out=args.heldout_data, backbones=backbones,
        backbone=str(args.backbone.resolve()) if args.backbone else "",
        pretrain_pool=args.pretrain_pool, modes=args.modes, ranks=args.ranks,
        train_fractions=args.train_fractions, seeds=args.seeds, epochs=args.epochs,
        pretrain_epochs=args.pretrain_epochs, split=args.split, data_dir=str(args.data_dir or ""),
        synthetic_domains=args.synthetic_domains, synthetic_subjects=args.synthetic_subjects,
        synthetic_seed=args.synthetic_seed, threads=args.threads, device=args.device,
        backbone_files=tuple(args.backbone_file), windows_files=tuple(args.windows_file),
    )
    bad = [b for b in args.backbone_file if "=" not in b or b.split("=", 1)[0] not in (args.heldout_data or args.data)]
    bad_windows = [w for w in args.windows_file if "=" not in w or w.split("=", 1)[0] not in args.data]
    if bad_windows:
        raise FedharError(f"--windows-file {bad_windows[0]}: expected NAME=PATH.npz with NAME among --data")
    if bad:
        raise FedharError(f"--backbone-file {bad[0]}: expected HELD_OUT=PATH with HELD_OUT among the held-out datasets")
    check_device(args.device)
    try:
        run_lodo(plan, args.out_dir, command="fedhar " + shlex.join(sys.argv[1:]))
    except ValueError as e:
        raise FedharError(str(e)) from None
    print((args.out_dir / "table.md").read_text())
    return 0
