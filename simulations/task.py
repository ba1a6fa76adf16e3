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
import torch.nn.functional as F

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


def build_model(cfg: FLConfig, n_classes: int, backbone: Path, pid: int | None = None,
                seed: int | None = None) -> Classifier:
    """Classifier on the frozen backbone, set up for client ``pid``'s mode and rank (the
    server's model: cfg.mode at the largest rank). Seeded, so every side builds the same
    head and the same initial A; FLoRA passes a per-round seed for its fresh adapters."""
    mode = cfg.client_mode(pid) if pid is not None else cfg.mode
    rank = cfg.client_rank(pid) if pid is not None else cfg.max_rank
    mae = _mae(str(backbone))  # loading builds (randomly initialised) modules: before seeding
    torch.manual_seed(cfg.seed if seed is None else seed)
    model = Classifier.from_mae(mae, n_classes)
    prepare_for_finetune(model, mode, rank=rank, alpha=cfg.lora_alpha)
    if cfg.strategy == "ffa":  # FFA-LoRA: A stays at its shared random init and never travels
        for name, p in model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad = False
    return model


def load_partial(model: Classifier, state: dict[str, np.ndarray]) -> None:
    """Copy the given tensors into the model's trainable ones; tensors not given keep their
    value (FedSA's local B, FLoRA's fresh adapters). Unknown keys or shapes are errors."""
    own = trainable_state_dict(model)
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise KeyError(f"the server sent tensors this client does not have: {unknown[:5]}")
    merged = {k: (torch.from_numpy(np.asarray(state[k])).to(v.dtype) if k in state else v) for k, v in own.items()}
    load_trainable_state_dict(model, merged)


def add_base_deltas(model: Classifier, deltas: dict[str, np.ndarray]) -> None:
    """FedEx / FLoRA: add each layer's dense update as x @ delta.T beside the frozen weight.

    The update lives in its own float32 tensor: folded into 4-bit NF4 weights it would be
    rounded away (dequantise -> add -> requantise erases small updates)."""
    for layer, delta in deltas.items():
        weight = torch.from_numpy(np.asarray(delta, dtype=np.float32))
        module = model.get_submodule(layer)
        module.register_forward_hook(lambda m, inputs, out, w=weight: out + F.linear(inputs[0], w))


def train_local(model: Classifier, data: ClientData, cfg: FLConfig, seed: int, proximal_mu: float = 0.0) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    loader = make_loader(data.train_x, data.train_y, cfg.batch_size, shuffle=True, seed=seed)
    criterion = torch.nn.CrossEntropyLoss()
    if proximal_mu > 0:  # FedProx: stay near the global adapters received this round
        anchors = [p.detach().clone() for p in params]
        cross_entropy = criterion

        def criterion(out, y):
            prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors))
            return cross_entropy(out, y) + proximal_mu / 2 * prox

    losses = [finetune_epoch(model, loader, optimizer, criterion).loss for _ in range(cfg.local_epochs)]
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
