"""Leave-One-Dataset-Out (LODO), the centralised baseline of arXiv 2512.17983.

For each held-out dataset: pretrain the MAE on the other datasets (cached), fine-tune on a
subject-disjoint 70% of the held-out dataset, evaluate on its other 30%, for every mode,
rank, training fraction and seed asked for. One tidy row per run is appended to
``runs.csv`` as soon as the run ends, so an interrupted study resumes where it stopped and a
later session can extend a table (new seeds, ranks, datasets) without redoing finished rows.

Backbones (``backbones``; every claim about pretraining needs its control):
  none             the same MAE at its seeded initialisation, never trained (the control)
  synthetic        pretrained on a separate synthetic population (seed + 1000)
  other            pretrained on the other datasets: the study's and ``pretrain_pool``'s
                   (datasets used only for pretraining, never held out), minus the held-out
                   one and any recorded from the same people (HAPT and UCI-HAR share their 30
                   volunteers); a dataset contained in another (UCI-HAR in HAPT) is not
                   repeated. No such dataset left is an error, never a silent substitute.
  other+synthetic  both
  file             the finished MAE checkpoint ``backbone`` names (``fedhar lodo --backbone``), e.g. one
                   federatedly pretrained (``fedhar fl --task pretrain``); a run whose test subjects
                   the checkpoint saw is refused (``check_unseen``, from the provenance it records)
The ``backbone_kind`` and ``pretrained_on`` columns say which. Mode ``probe`` (head only, on
the frozen unadapted backbone) is the diagnostic of what a backbone's features carry.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedhar.data import LabelSpace, WindowSet, load
from fedhar.data.registry import SAME_PEOPLE, SYNTHETIC, get_reader
from fedhar.data.splits import lodo_split
from fedhar.data.synthetic import SyntheticConfig
from fedhar.errors import FedharError
from fedhar.finetune import FinetuneConfig, finetune_checkpoint, finetune_in_fresh_process
from fedhar.options import SYNTHETIC_DOMAINS, SYNTHETIC_SEED, SYNTHETIC_SUBJECTS
from fedhar.pretrain import PretrainConfig, backbone_provenance, check_unseen, pretrain, random_init_backbone

#: a dataset whose recordings contain another's (UCI-HAR is cut from HAPT's): pretrain on one
CONTAINS = {"hapt": "uci-har"}
BACKBONES = ("none", "synthetic", "other", "other+synthetic", "file")
KEY = ("held_out", "backbone_kind", "mode", "rank", "train_fraction", "seed", "epochs", "split")


@dataclass(frozen=True)
class LodoPlan:
    datasets: tuple[str, ...]  # "synthetic" stands for its domains, each a dataset
    held_out: tuple[str, ...] = ()  # () = every dataset in turn
    backbones: tuple[str, ...] = ("other",)  # see BACKBONES
    pretrain_pool: tuple[str, ...] = ()  # datasets used only to pretrain (never held out)
    modes: tuple[str, ...] = ("full", "lora", "qlora")
    ranks: tuple[int, ...] = (16,)
    train_fractions: tuple[float, ...] = (0.7,)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 20
    batch_size: int = 64
    pretrain_epochs: int = 30
    split: str = "random"  # "random" (seeded, subject-disjoint) | "published" where a dataset has one
    data_dir: str = ""
    synthetic_domains: int = SYNTHETIC_DOMAINS  # fedhar.options: every command's synthetic defaults
    synthetic_subjects: int = SYNTHETIC_SUBJECTS
    synthetic_seed: int = SYNTHETIC_SEED
    fresh_process: bool = True  # each run in a new process: clean peak-memory numbers
    threads: int = 0  # torch threads (0 = torch's default); 1 keeps runs steady on a shared machine
    device: str = "cpu"  # "cuda": fine-tune on the GPU (rows say which device; compare within one)
    #: "HELD_OUT=PATH": the ``other`` backbone of that held-out dataset is this finished checkpoint
    #: (its sidecar names what it was pretrained on; checked like a fresh one), so a study can run
    #: where the pretraining data is not, e.g. on a GPU machine
    backbone_files: tuple[str, ...] = ()
    #: the checkpoint of backbone kind "file" (``fedhar lodo --backbone PATH``)
    backbone: str = ""
    #: "NAME=PATH.npz": read that dataset's windows from a prepared cache file (``load`` wrote it,
    #: checksum checked) instead of preparing them from the raw recordings
    windows_files: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_config(plan: LodoPlan, pretraining: bool = False) -> SyntheticConfig:
    seed = plan.synthetic_seed + (1000 if pretraining else 0)
    return SyntheticConfig(n_domains=plan.synthetic_domains, subjects_per_domain=plan.synthetic_subjects, seed=seed)


def load_study(plan: LodoPlan) -> dict[str, WindowSet]:
    """Windows of every dataset of the study, by name (synthetic expanded to its domains)."""
    from fedhar.data.loading import load_prepared

    out, prepared = {}, dict(entry.split("=", 1) for entry in plan.windows_files)
    for name in plan.datasets:
        synth = synthetic_config(plan) if name == SYNTHETIC else None
        if name in prepared:
            ws = load_prepared(prepared[name], name)
        else:
            ws = load(name, plan.data_dir or None, synthetic=synth).windows
        for part in ws.datasets():
            out[part] = ws.subset(ws.dataset == part)
    return out


def pretrain_sources(held_out: str, available: list[str]) -> list[str]:
    excluded = {held_out}
    for group in SAME_PEOPLE:
        if held_out in group:
            excluded |= group
    sources = [d for d in available if d not in excluded]
    return [d for d in sources if not any(CONTAINS.get(other) == d for other in sources)]


def backbone_for(held_out: str, kind: str, study: dict[str, WindowSet], plan: LodoPlan, log) -> tuple[Path, str]:
    """(checkpoint, description) of the ``kind`` backbone for a held-out dataset (cached)."""
    cfg = PretrainConfig(epochs=plan.pretrain_epochs, seed=0)
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone {kind!r}; choose from {', '.join(BACKBONES)}")
    if kind == "none":
        return random_init_backbone(cfg), "none (random init, seed 0)"
    if kind == "file":
        if not plan.backbone:
            raise ValueError("backbone kind 'file' needs --backbone PATH")
        return Path(plan.backbone), describe_backbone(Path(plan.backbone))
    given = dict(entry.split("=", 1) for entry in plan.backbone_files)
    if kind == "other" and held_out in given:
        return given_backbone(held_out, Path(given[held_out]).expanduser(), log)
    parts, described = [], []
    if kind.startswith("other"):
        pool = list(study) + [d for d in plan.pretrain_pool if d not in study]
        sources = pretrain_sources(held_out, pool)
        if not sources:
            raise ValueError(f"no other dataset to pretrain on for held-out {held_out} (same people excluded); "
                             "add one with --pretrain-pool or use --backbones synthetic")
        for name in sources:
            parts.append(study[name] if name in study else load(name, plan.data_dir or None).windows)
        described.append("+".join(sources))
    if kind.endswith("synthetic"):
        parts.append(load(SYNTHETIC, synthetic=synthetic_config(plan, pretraining=True)).windows)
        described.append(f"synthetic population (seed {plan.synthetic_seed + 1000})")
    log(f"[{held_out}] backbone: {' + '.join(described)}")
    return pretrain(WindowSet.concat(parts), cfg), " + ".join(described)


def describe_backbone(path: Path) -> str:
    info = backbone_provenance(path)
    if info.get("random_init"):
        return f"none (random init, seed {info.get('seed')})"
    if "rule" in info:  # fedhar fl --task pretrain (simulations/fed_pretrain.py)
        how = f"federated {info['rule']}" if info.get("federated") else "centralised"
        return f"{how} MAE, {info['rounds']} rounds on {'+'.join(info['datasets'])} ({path.name})"
    return f"{'+'.join(info.get('datasets', [])) or 'unknown data'} ({path.name})"


def given_backbone(held_out: str, path: Path, log) -> tuple[Path, str]:
    """A finished ``other`` checkpoint named by the user, refused if it saw the held-out people."""
    info_path = path.with_suffix(".json")
    if not path.exists() or not info_path.exists():
        raise ValueError(f"--backbone-file {held_out}={path}: needs the checkpoint and its .json sidecar "
                         "(both written by fedhar pretrain)")
    sources = list(json.loads(info_path.read_text()).get("datasets", []))
    allowed = pretrain_sources(held_out, sources)
    if not sources or sorted(allowed) != sorted(sources):
        raise ValueError(f"--backbone-file {held_out}={path}: pretrained on {sources or 'unknown data'}, which "
                         f"includes {held_out} or its people; the 'other' backbone must not have seen them")
    log(f"[{held_out}] backbone: {'+'.join(sources)} (given: {path})")
    return path, "+".join(sources)


def device_name(device: str) -> str:
    """What a row records as its device: "cpu", or the GPU's own name (timings differ by card)."""
    if device.startswith("cuda"):
        return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def runs_of(plan: LodoPlan, held_out: str) -> list[dict]:
    runs = []
    for seed in plan.seeds:
        for fraction in plan.train_fractions:
            for kind in plan.backbones:
                for mode in plan.modes:
                    for rank in ([0] if mode in ("full", "probe") else plan.ranks):
                        runs.append({"held_out": held_out, "backbone_kind": kind, "mode": mode, "rank": rank,
                                     "train_fraction": fraction, "seed": seed, "epochs": plan.epochs,
                                     "split": plan.split})
    return runs


def _key(row: dict) -> tuple:
    return tuple(str(row.get(k, "")) for k in KEY)  # rows written before a key existed: ""


def done_keys(csv_path: Path) -> set[tuple]:
    if not csv_path.exists():
        return set()
    return {_key(r) for r in pd.read_csv(csv_path).to_dict("records")}


def append_row(csv_path: Path, row: dict) -> None:
    """Append one row; a column the file does not have yet (rows of older code) widens the file."""
    if csv_path.exists():
        with open(csv_path, newline="") as f:
            header = next(csv.reader(f), [])
        if set(row) - set(header):
            table = pd.concat([pd.read_csv(csv_path), pd.DataFrame([row])], ignore_index=True)
            tmp = csv_path.with_suffix(".tmp")
            table.to_csv(tmp, index=False)
            tmp.replace(csv_path)
            return
    else:
        header = list(row)
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        if f.tell() == 0:
            writer.writeheader()
        writer.writerow(row)


def split_for(ws: WindowSet, name: str, run: dict, plan: LodoPlan):
    test_subjects = None
    if plan.split == "published":
        try:
            published = get_reader(name).published_test_subjects
        except FedharError:  # a synthetic domain: no reader, no published split
            published = None
        if not published:
            raise ValueError(f"{name} has no published split; use split='random'")
        test_subjects = {name: published}
    return lodo_split(ws, run["train_fraction"], run["seed"], test_subjects)


def run_lodo(plan: LodoPlan, out_dir: Path, command: str = "", log=None) -> pd.DataFrame:
    """Run (or resume) the plan; returns every row of ``out_dir/runs.csv``."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if plan.threads:
        torch.set_num_threads(plan.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "runs.csv"
    study = load_study(plan)
    held = list(plan.held_out) or list(study)
    missing = [h for h in held if h not in study]
    if missing:
        raise ValueError(f"held-out {missing} not in the study's datasets {sorted(study)}")
    todo = [r for h in held for r in runs_of(plan, h)]
    finished = done_keys(csv_path)
    pending = [r for r in todo if _key(r) not in finished]
    log(f"LODO: {len(todo)} runs planned, {len(todo) - len(pending)} already in {csv_path}, {len(pending)} to go")
    _write_plan(out_dir, plan, command)
    t_start, n_done, code = time.perf_counter(), 0, code_version()
    backbones: dict[tuple[str, str], tuple[Path, str]] = {}
    for run in pending:
        name, kind = run["held_out"], run["backbone_kind"]
        if (name, kind) not in backbones:
            backbones[name, kind] = backbone_for(name, kind, study, plan, log)
        path, described = backbones[name, kind]
        train, test, _ = split_for(study[name], name, run, plan)
        if kind == "file":
            check_unseen(path, name, np.unique(test.subject))
        labels = LabelSpace.from_ids(study[name].y)
        cfg = FinetuneConfig(mode=run["mode"], rank=max(run["rank"], 1), epochs=plan.epochs,
                             batch_size=plan.batch_size, seed=run["seed"], device=plan.device)
        log(f"[{name}] {kind} backbone, {run['mode']} rank {run['rank']} train {run['train_fraction']:.0%} seed {run['seed']}: "
            f"{len(train)} train / {len(test)} test windows, {labels.size} classes")
        run_one = finetune_in_fresh_process if plan.fresh_process else finetune_checkpoint
        result = run_one(str(path), train.x, labels.encode(train.y), test.x, labels.encode(test.y),
                         labels.size, cfg=cfg, threads=plan.threads, label_space=labels.names,
                         save_to=str(out_dir / "models" / model_name(run)))
        row = {**run, "device": device_name(plan.device),
               "threads": torch.get_num_threads(), "pretrained_on": described, "backbone": path.name, "lr": cfg.effective_lr,
               "alpha": cfg.effective_alpha if run["mode"] in ("lora", "qlora") else 0, **result.row(),
               "code": code, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        if not plan.fresh_process and not plan.device.startswith("cuda"):
            # RSS growth in a process that already holds earlier runs' memory is not this run's peak: left empty
            row["peak_mem_mb"] = float("nan")
        append_row(csv_path, row)
        n_done += 1
        rate = (time.perf_counter() - t_start) / n_done
        log(f"[{name}] {kind} backbone, {run['mode']} r{run['rank']}: accuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f} "
            f"({result.sec_per_epoch:.1f} s/epoch) - {n_done}/{len(pending)} done, ~{rate * (len(pending) - n_done) / 60:.0f} min left")
    rows = pd.read_csv(csv_path)
    (out_dir / "table.md").write_text(markdown_table(rows))
    return rows


def model_name(run: dict) -> str:
    """The folder of a run's saved model under OUT_DIR/models/ (fedhar evaluate reads it)."""
    return (f"{run['held_out']}-{run['backbone_kind']}-{run['mode']}-r{run['rank']}-train{run['train_fraction']:g}"
            f"-seed{run['seed']}"
            f"-{run['epochs']}ep-{run['split']}")


def code_version() -> str:
    """The git commit of the code that runs (with "-dirty" for uncommitted changes), if any."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "fedhar", "strategies", "simulations"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        # a copy of the code without its .git (e.g. shipped to a GPU machine) may say where it came from
        import os

        return os.environ.get("FEDHAR_CODE_VERSION", "unknown")


def _write_plan(out_dir: Path, plan: LodoPlan, command: str) -> None:
    plans = out_dir / "plan.json"
    history = json.loads(plans.read_text()) if plans.exists() else []
    entry = {"command": command, "plan": plan.to_dict(), "code": code_version(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    history.append(entry)
    plans.write_text(json.dumps(history, indent=1))


def markdown_table(rows: pd.DataFrame) -> str:
    """Mean ± standard deviation over seeds, one line per (held-out, mode, rank, fraction)."""
    if "backbone_kind" not in rows:
        rows = rows.assign(backbone_kind="")
    rows = rows.assign(backbone_kind=rows["backbone_kind"].fillna(""))
    group = ["held_out", "backbone_kind", "pretrained_on", "split", "train_fraction", "mode", "rank", "epochs"]
    agg = rows.groupby(group, sort=False).agg(
        seeds=("seed", "nunique"),
        acc_mean=("accuracy", "mean"), acc_std=("accuracy", "std"),
        f1_mean=("macro_f1", "mean"), f1_std=("macro_f1", "std"),
        precision=("macro_precision", "mean"), recall=("macro_recall", "mean"),
        trainable=("trainable_params", "first"), total=("total_params", "first"),
        frozen_kb=("frozen_bytes", lambda b: b.iloc[0] / 1024), trainable_kb=("trainable_bytes", lambda b: b.iloc[0] / 1024),
        state_mb=("state_bytes", lambda b: b.iloc[0] / 2**20), peak_mb=("peak_mem_mb", "max"), sec_epoch=("sec_per_epoch", "median"),
    ).reset_index()

    def pm(mean, std):
        return f"{mean:.3f}" if np.isnan(std) else f"{mean:.3f} ± {std:.3f}"

    lines = ["| held out | pretrained on | split | train | mode | rank | epochs | seeds | accuracy | macro-F1 | "
             "precision | recall | trainable / total params | frozen KiB | trainable KiB | train state MiB | peak RSS MiB | s/epoch |",
             "|" + "---|" * 18]
    for r in agg.itertuples():
        lines.append(
            f"| {r.held_out} | {r.pretrained_on} | {r.split} | {r.train_fraction:.0%} | {r.mode} | "
            f"{r.rank if r.mode in ('lora', 'qlora') else '-'} | {r.epochs} | {r.seeds} | {pm(r.acc_mean, r.acc_std)} | "
            f"{pm(r.f1_mean, r.f1_std)} | {r.precision:.3f} | {r.recall:.3f} | {r.trainable:,} / {r.total:,} | "
            f"{r.frozen_kb:,.0f} | {r.trainable_kb:,.0f} | {r.state_mb:.1f} | {r.peak_mb:.0f} | {r.sec_epoch:.1f} |")
    return "\n".join(lines) + "\n"
