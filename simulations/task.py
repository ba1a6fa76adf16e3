"""What a federated client works with: its data, the model, local training and evaluation.

Shared by the ClientApp, the ServerApp (initial adapters, label space) and the in-process
runner, so every side builds exactly the same thing from the same FLConfig.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedhar.data import LabelSpace, WindowSet, load
from fedhar.data.partition import by_dataset, by_subject, dirichlet
from fedhar.data.splits import Normaliser, subject_split
from fedhar.data.synthetic import SyntheticConfig
from fedhar.model import (
    Classifier,
    evaluate,
    finetune_epoch,
    load_trainable_state_dict,
    make_loader,
    prepare_for_finetune,
    trainable_state_dict,
)
from fedhar.model.checkpoint import load_mae
from fedhar.pretrain import PretrainConfig, pretrain
from simulations.config import FLConfig

PRETRAIN_SEED_OFFSET = 1000  # the synthetic pretraining population is a different draw


def synthetic_config(cfg: FLConfig, pretraining: bool = False) -> SyntheticConfig:
    seed = cfg.seed + (PRETRAIN_SEED_OFFSET if pretraining else 0)
    return SyntheticConfig(n_domains=cfg.synthetic_domains, subjects_per_domain=cfg.synthetic_subjects, seed=seed)


def load_windows(datasets: list[str], cfg: FLConfig, pretraining: bool = False) -> WindowSet:
    parts = []
    for name in datasets:
        synth = synthetic_config(cfg, pretraining) if name == "synthetic" else None
        parts.append(load(name, cfg.data_dir or None, synthetic=synth).windows)
    return WindowSet.concat(parts)


def ensure_backbone(cfg: FLConfig, quiet: bool = False) -> Path:
    """The MAE checkpoint for this run: the given one, or pretrained (once, then cached)."""
    if cfg.backbone:
        return Path(cfg.backbone)
    pretrain_sets = [d for d in cfg.pretrain_data.split("+") if d]
    overlap = set(pretrain_sets) & set(cfg.datasets) - {"synthetic"}
    if overlap:
        raise ValueError(f"pretrain-data and data share {sorted(overlap)}: the backbone would see test data")
    windows = load_windows(pretrain_sets, cfg, pretraining=True)
    return pretrain(windows, PretrainConfig(epochs=cfg.pretrain_epochs, seed=cfg.seed), quiet=quiet)


@functools.lru_cache(maxsize=4)
def _mae(path: str):
    return load_mae(path)


@dataclass
class ClientData:
    name: str
    train_x: np.ndarray
    train_y: np.ndarray  # indices into the federation's label space
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass
class Federation:
    """The clients' windows and the shared label space of one run."""

    windows: WindowSet
    parts: dict[str, np.ndarray]
    labels: LabelSpace

    @property
    def client_names(self) -> list[str]:
        return list(self.parts)


@functools.lru_cache(maxsize=2)
def _federation(cfg_json: str) -> Federation:
    cfg = FLConfig.from_run_config(__import__("json").loads(cfg_json))
    ws = load_windows(cfg.datasets, cfg)
    if cfg.partition == "dataset":
        parts = by_dataset(ws)
    elif cfg.partition == "subject":
        parts = by_subject(ws)
    else:
        parts = dirichlet(ws, cfg.num_clients, cfg.dirichlet_alpha, seed=cfg.seed)
    return Federation(ws, parts, LabelSpace.from_ids(ws.y))


def federation(cfg: FLConfig) -> Federation:
    return _federation(cfg.to_json())


def client_data(cfg: FLConfig, partition_id: int) -> ClientData:
    """Client ``partition_id``'s train/test windows, z-normalised with its training statistics.

    partition = dataset: subject-disjoint split inside the client. A per-subject or
    Dirichlet client may hold one subject, so it splits its windows in time order instead
    (the first 70% of each recording's windows train, the rest test).
    """
    fed = federation(cfg)
    name = fed.client_names[partition_id]
    ws = fed.windows.subset(fed.parts[name])
    if cfg.partition == "dataset":
        train, test = subject_split(ws, cfg.test_fraction, seed=cfg.seed)
    else:
        cut = int(round(len(ws) * (1 - cfg.test_fraction)))
        train, test = ws.subset(np.arange(cut)), ws.subset(np.arange(cut, len(ws)))
    norm = Normaliser.fit(train)
    train, test = norm.apply(train), norm.apply(test)
    return ClientData(name, train.x, fed.labels.encode(train.y), test.x, fed.labels.encode(test.y))


def build_model(cfg: FLConfig, n_classes: int, backbone: Path) -> Classifier:
    """Classifier on the frozen backbone, set up for cfg.mode; seeded, so every side agrees."""
    torch.manual_seed(cfg.seed)
    model = Classifier.from_mae(_mae(str(backbone)), n_classes)
    return prepare_for_finetune(model, cfg.mode, rank=cfg.rank, alpha=cfg.lora_alpha)


def train_local(model: Classifier, data: ClientData, cfg: FLConfig, seed: int) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    loader = make_loader(data.train_x, data.train_y, cfg.batch_size, shuffle=True, seed=seed)
    losses = [finetune_epoch(model, loader, optimizer).loss for _ in range(cfg.local_epochs)]
    return {"train_loss": float(losses[-1]), "num-examples": len(data.train_y)}


def evaluate_local(model: Classifier, data: ClientData) -> dict:
    m = evaluate(model, data.test_x, data.test_y)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "num-examples": m["n"]}


def get_trainable(model: Classifier) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in trainable_state_dict(model).items()}


def set_trainable(model: Classifier, arrays: dict[str, np.ndarray]) -> None:
    own = trainable_state_dict(model)
    load_trainable_state_dict(
        model, {k: torch.from_numpy(np.asarray(v)).to(own[k].dtype) for k, v in arrays.items()}
    )


def with_backbone(cfg: FLConfig, path: Path) -> FLConfig:
    return replace(cfg, backbone=str(path))
