"""What a federated client works with: its data, the model, local training and evaluation.

Shared by the ClientApp, the ServerApp (initial adapters, label space, server-held test
split) and the in-process runner, so every side builds exactly the same thing from the
same FLConfig.

Data flow (``federation``): load the windows of ``cfg.data``; with server_test_fraction > 0
take out, per dataset, the subjects the LODO baseline tests on (``server_test_mask``): the
server keeps them; partition the rest into clients (by dataset, subject or Dirichlet); split
every client into its own train / test windows; fit the z-normalisation statistics; decide
whether the head is shared or local.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fedhar.data import LabelSpace, WindowSet, load
from fedhar.data.few_labels import labelled_clients, labelled_windows
from fedhar.data.labels import encode_open  # noqa: F401 (used here and by the apps)
from fedhar.data.partition import by_dataset, by_subject, dirichlet
from fedhar.data.registry import load_readers
from fedhar.data.splits import Normaliser, lodo_split, split_subjects
from fedhar.data.synthetic import SyntheticConfig
from fedhar.errors import FedharError
from fedhar.model import (
    Classifier,
    evaluate,
    finetune_epoch,
    load_trainable_state_dict,
    make_loader,
    prepare_for_finetune,
    trainable_state_dict,
    trainable_tensors,
)
from fedhar.model.base_delta import add_base_deltas  # noqa: F401 (the ClientApp's, from here)
from fedhar.model.checkpoint import load_mae
from fedhar.model.head import ClassificationHead
from fedhar.pretrain import PretrainConfig, pretrain
from simulations.config import FLConfig
from strategies.registry import get_rule

PRETRAIN_SEED_OFFSET = 1000  # the synthetic pretraining population is a different draw
HELDOUT_SEED_OFFSET = 2000  # and so is the held-out synthetic population (heldout_data = synthetic)
HEAD_PREFIX = "head."  # the classification head's tensors in trainable_state_dict
BACKBONE_KEY = "backbone"  # in every train / evaluate message's config: the server's backbone


def synthetic_config(cfg: FLConfig, pretraining: bool = False, heldout: bool = False) -> SyntheticConfig:
    seed = cfg.synthetic_seed + cfg.seed + (PRETRAIN_SEED_OFFSET if pretraining else HELDOUT_SEED_OFFSET if heldout else 0)
    return SyntheticConfig(n_domains=cfg.synthetic_domains, subjects_per_domain=cfg.synthetic_subjects, seed=seed)


def load_windows(datasets: list[str], cfg: FLConfig, pretraining: bool = False, heldout: bool = False) -> WindowSet:
    load_readers(cfg.readers)  # an unpickled FLConfig (a Ray actor's) was never validated: register them here
    parts = []
    for name in datasets:
        synth = synthetic_config(cfg, pretraining, heldout) if name == "synthetic" else None
        parts.append(load(name, cfg.data_dir or None, synthetic=synth).windows)
    return WindowSet.concat(parts)


def is_head_key(key: str) -> bool:
    return key.startswith(HEAD_PREFIX)


def server_test_mask(ws: WindowSet, test_fraction: float, seed: int) -> np.ndarray:
    """Which windows are the test subjects of the centralised LODO baseline, per dataset.

    The very split ``fedhar.lodo`` makes for a held-out dataset with train fraction
    1 - test_fraction and this seed (``fedhar.data.splits.lodo_split``, random split).
    """
    is_test = np.zeros(len(ws), bool)
    for name in ws.datasets():
        in_ds = ws.dataset == name
        try:
            _, test, _ = lodo_split(ws.subset(in_ds), 1.0 - test_fraction, seed)
        except ValueError as e:
            raise FedharError(f"{name}: cannot hold out test subjects on the server: {e}") from None
        is_test |= in_ds & np.isin(ws.subject, np.unique(test.subject))
    return is_test


def head_size(labels: LabelSpace) -> int:
    """Outputs of a head for ``labels``: one per class, at least 2 (a one-class client's
    head has one spare output that no window is labelled with)."""
    return max(2, labels.size)


def ensure_backbone(cfg: FLConfig, quiet: bool = False) -> Path:
    """The MAE checkpoint for this run: the given one, or pretrained (once, then cached)."""
    if cfg.backbone:
        _mae(str(cfg.backbone))  # a missing or damaged file is an error now, naming it
        return Path(cfg.backbone)
    pretrain_sets = cfg.pretrain_datasets  # unseen by the clients: FLConfig checked
    windows = load_windows(pretrain_sets, cfg, pretraining=True)
    return pretrain(windows, PretrainConfig(epochs=cfg.pretrain_epochs, seed=cfg.seed), quiet=quiet)


@functools.lru_cache(maxsize=4)
def _mae(path: str):
    return load_mae(path)


@dataclass
class ClientData:
    name: str
    train_x: np.ndarray
    train_y: np.ndarray  # class indices of the client's head (the federation's label space if shared)
    test_x: np.ndarray
    test_y: np.ndarray  # the same; a label the head has no output for gets an index >= n_classes
    labels: LabelSpace | None = None  # the classes of the client's head
    n_classes: int = 0  # outputs of the client's head
    out_of_space: int = 0  # test windows whose label the head has no output for (always errors)


@dataclass
class Federation:
    """The clients' windows, the server's test windows and the label space(s) of one run."""

    windows: WindowSet  # the clients' windows (the training subjects, if the server holds a test split)
    parts: dict[str, np.ndarray]  # client name -> indices into windows
    labels: LabelSpace  # the federation's label space: every class some client holds
    splits: list[tuple[np.ndarray, np.ndarray]]  # per client: (train, test) indices into windows
    norm: Normaliser  # per dataset, fitted on every client's training windows of that dataset
    server_test: WindowSet  # raw windows of the server's test subjects (empty: no server split)
    client_labels: list[LabelSpace]  # per client: the classes in its training windows
    head: str  # "shared" | "local" (cfg.head resolved)
    few_labels: dict = field(default_factory=dict)  # --label-fraction / --labelled-clients: what was kept

    @property
    def client_names(self) -> list[str]:
        return list(self.parts)


def _client_split(ws: WindowSet, cfg: FLConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into one client's windows ``ws``.

    partition = dataset: subject-disjoint per dataset (as ``subject_split``). A per-subject
    or Dirichlet client may hold one subject, so it splits each activity in time order: the
    first (1 - test_fraction) of that activity's windows train, the rest test. Per activity,
    because recordings run one activity after another: a plain time cut would test a
    client on activities it never trained on. The window right after each cut is left out
    of both sides: with 50% overlap it shares half its samples with the last training
    window.
    """
    if cfg.partition == "dataset":
        is_test = np.zeros(len(ws), bool)
        for name in ws.datasets():
            in_ds = ws.dataset == name
            try:
                _, held_out = split_subjects(ws.subject[in_ds], cfg.test_fraction, cfg.seed)
            except ValueError as e:
                raise FedharError(f"client {name}: cannot split its subjects into train and test: {e}") from None
            is_test |= in_ds & np.isin(ws.subject, held_out)
        return np.flatnonzero(~is_test), np.flatnonzero(is_test)
    train, test = [], []
    for label in np.unique(ws.y):
        idx = np.flatnonzero(ws.y == label)  # in time order within the client
        cut = int(round(len(idx) * (1 - cfg.test_fraction)))
        train.append(idx[:cut])
        test.append(idx[cut + 1:])  # skip the window overlapping the last training one
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def resolve_head(cfg: FLConfig, labels: LabelSpace, client_labels: list[LabelSpace]) -> str:
    """cfg.head, with "auto" = local when some client's training labels miss a class of the
    federation's label space (its share of a shared head would be trained on no example
    of those classes), else shared."""
    if cfg.head != "auto":
        return cfg.head
    return "local" if any(set(c.names) != set(labels.names) for c in client_labels) else "shared"


@functools.lru_cache(maxsize=2)
def _federation(cfg_json: str) -> Federation:
    cfg = FLConfig.from_run_config(__import__("json").loads(cfg_json))
    ws = load_windows(cfg.datasets, cfg)
    server_test = WindowSet.empty(ws.x.shape[-1])
    if cfg.server_test_fraction > 0:
        held = server_test_mask(ws, cfg.server_test_fraction, cfg.seed)
        ws, server_test = ws.subset(~held), ws.subset(held)
        if cfg.server_val_fraction > 0:  # tuning: the test subjects leave; validation subjects take their place
            val = server_test_mask(ws, cfg.server_val_fraction, cfg.seed)
            ws, server_test = ws.subset(~val), ws.subset(val)
    if cfg.partition == "dataset":
        parts = by_dataset(ws)
    elif cfg.partition == "subject":
        parts = by_subject(ws)
    else:
        try:
            parts = dirichlet(ws, cfg.num_clients, cfg.dirichlet_alpha, seed=cfg.seed)
        except ValueError as e:
            raise FedharError(f"--num-clients {cfg.num_clients} --dirichlet-alpha {cfg.dirichlet_alpha}: {e}") from None
    cfg.check_clients(len(parts))
    splits = []
    labelled = ws.labels_only()  # no samples read: a large dataset's stay in their file (fedhar.data.mapped)
    for idx in parts.values():
        train, test = _client_split(labelled.subset(idx), cfg)
        splits.append((idx[train], idx[test]))
    # normalise = dataset: per dataset, the mean and std of every client's training windows
    # of that dataset (labelled or not). That is exactly what one federated round of per-client
    # sums, sums of squares and counts (per dataset and channel) would give the server, so no
    # window leaves its client to compute it; here it is computed directly.
    norm = Normaliser.fit(ws, rows=np.concatenate([train for train, _ in splits]))
    few = {}
    if cfg.task == "finetune" and (cfg.label_fraction < 1 or cfg.labelled_clients):
        parts, splits, few = _few_labels(labelled, parts, splits, cfg)
    if cfg.arm == "centralised":  # one client: exactly the union of the clients' own splits
        parts = {"centralised": np.concatenate(list(parts.values()))}
        splits = [(np.concatenate([t for t, _ in splits]), np.concatenate([e for _, e in splits]))]
    labels = LabelSpace.from_ids(ws.y)
    client_labels = [LabelSpace.from_ids(ws.y[train]) for train, _ in splits]
    return Federation(ws, parts, labels, splits, norm, server_test, client_labels,
                      resolve_head(cfg, labels, client_labels), few)


def _few_labels(ws: WindowSet, parts: dict, splits: list, cfg: FLConfig) -> tuple[dict, list, dict]:
    """Fine-tuning with few labels (fedhar.data.few_labels): only the --labelled-clients keep a
    place in the federation, each with its --label-fraction of labelled training windows. The
    partition, the test windows and the normalisation are those of the full federation, so a
    backbone federatedly pretrained with the same seed saw exactly these clients' windows."""
    names = list(parts)
    keep = labelled_clients(len(names), cfg.labelled_clients, cfg.seed)
    new_parts, new_splits = {}, []
    for pid in keep:
        train, test = splits[pid]
        train = train[labelled_windows(ws.y[train], ws.subset(train).subject_keys(), cfg.label_fraction, [cfg.seed, pid])]
        new_parts[names[pid]] = parts[names[pid]]
        new_splits.append((train, test))
    return new_parts, new_splits, {
        "label_fraction": cfg.label_fraction, "clients_with_labels": [names[p] for p in keep],
        "clients_without_labels": [n for p, n in enumerate(names) if p not in keep],
        "training_windows": int(sum(len(t) for t, _ in splits)),
        "labelled_windows": int(sum(len(t) for t, _ in new_splits))}


def data_sources(cfg: FLConfig) -> dict[str, str]:
    """Dataset -> the folder it is read from ("synthetic" is generated), for config.json."""
    from fedhar.data.loading import find_dataset

    names = dict.fromkeys([*cfg.datasets, *cfg.heldout_datasets,
                           *([] if cfg.backbone or cfg.task == "pretrain" else [d for d in cfg.pretrain_data.split("+") if d])])
    return {name: "generated" if name == "synthetic" else str(find_dataset(name, cfg.data_dir or None).resolve())
            for name in names}


def federation(cfg: FLConfig) -> Federation:
    return _federation(cfg.to_json())


def client_data(cfg: FLConfig, partition_id: int) -> ClientData:
    """Client ``partition_id``'s train/test windows (see ``_client_split``), z-normalised
    with its dataset's training statistics (normalise = dataset) or its own (client).

    Labels are indices of the client's head: the federation's label space when the head is
    shared, the client's own training classes when it is local. A test window of a class
    the client never trained on is kept and counted in ``out_of_space`` (always an error).
    """
    fed = federation(cfg)
    train_idx, test_idx = fed.splits[partition_id]
    train, test = fed.windows.subset(train_idx), fed.windows.subset(test_idx)
    norm = fed.norm if cfg.normalise == "dataset" else Normaliser.fit(train)
    train, test = norm.apply(train), norm.apply(test)
    labels = fed.labels if fed.head == "shared" else fed.client_labels[partition_id]
    n_classes = labels.size if fed.head == "shared" else head_size(labels)
    test_y, out_of_space = encode_open(labels, test.y, n_classes)
    return ClientData(fed.client_names[partition_id], train.x, labels.encode(train.y), test.x, test_y,
                      labels, n_classes, out_of_space)


def build_model(cfg: FLConfig, n_classes: int, backbone: Path, pid: int | None = None,
                seed: int | None = None, head_classes: int | None = None, device: str = "cpu") -> Classifier:
    """Classifier on the frozen backbone, set up for client ``pid``'s mode and rank (the
    server's model: cfg.mode at the largest rank). Seeded, so every side builds the same
    head and the same initial A; FLoRA passes a per-round seed for its fresh adapters.

    head_classes: a local head of that many outputs instead of the n_classes one. The
    model is built with n_classes first, so the adapters' initial A is the same as on
    every other side (FFA-LoRA's frozen A must be), then the head is replaced by a fresh
    one, seeded too. device: where it lives (a client's ``cfg.device``; the server's stays on the CPU)."""
    mode = cfg.client_mode(pid) if pid is not None else cfg.mode
    rank = cfg.client_rank(pid) if pid is not None else cfg.max_rank
    mae = _mae(str(backbone))  # loading builds (randomly initialised) modules: before seeding
    torch.manual_seed(cfg.seed if seed is None else seed)
    model = Classifier.from_mae(mae, n_classes)
    prepare_for_finetune(model, mode, rank=rank, alpha=cfg.lora_alpha, fused=cfg.fused_lora)
    if head_classes is not None and head_classes != n_classes:
        torch.manual_seed((cfg.seed if seed is None else seed) + 1)
        model.head = ClassificationHead(model.encoder.config.dim, head_classes)  # trainable, as the old
    get_rule(cfg.strategy).prepare_model(model)  # what the rule freezes (FFA-LoRA: A) never travels
    return model if device == "cpu" else model.to(device)  # built on the CPU first: the same values everywhere


def load_partial(model: Classifier, state: dict[str, np.ndarray]) -> None:
    """Copy the given tensors into the model's trainable ones; tensors not given keep their
    value (FedSA's local B, FLoRA's fresh adapters). Unknown keys or shapes are errors."""
    own = trainable_tensors(model)  # the model's own tensors: those not given are left as they are
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise KeyError(f"the server sent tensors this client does not have: {unknown[:5]}")
    merged = {k: (torch.from_numpy(np.asarray(state[k])).to(v.dtype) if k in state else v) for k, v in own.items()}
    load_trainable_state_dict(model, merged)


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

    if cfg.dp_sgd_noise > 0:  # record-level DP-SGD (fedhar/model/dp_sgd.py); the client reports its epsilon
        if proximal_mu > 0:
            raise FedharError("--dp-sgd-noise clips each window's gradient; FedProx's proximal term is not one: "
                              "not both (use --strategy fedavg)")
        from fedhar.model.dp_sgd import dp_sgd_epoch

        x, y = torch.as_tensor(data.train_x, dtype=torch.float32), torch.as_tensor(data.train_y, dtype=torch.int64)
        runs = [dp_sgd_epoch(model, x, y, optimizer, cfg.batch_size, cfg.dp_sgd_clip, cfg.dp_sgd_noise)
                for _ in range(cfg.local_epochs)]
        return {"train_loss": float(runs[-1][0]), "num-examples": len(data.train_y),
                "dp-sgd-steps": sum(steps for _, steps in runs)}
    losses = [finetune_epoch(model, loader, optimizer, criterion).loss for _ in range(cfg.local_epochs)]
    return {"train_loss": float(losses[-1]), "num-examples": len(data.train_y)}


def evaluate_local(model: Classifier, data: ClientData) -> dict:
    m = evaluate(model, data.test_x, data.test_y)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "precision": m["macro_precision"],
            "recall": m["macro_recall"], "num-examples": m["n"], "out-of-space": data.out_of_space}


def get_trainable(model: Classifier) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() for k, v in trainable_state_dict(model).items()}


def set_trainable(model: Classifier, arrays: dict[str, np.ndarray]) -> None:
    own = trainable_state_dict(model)
    load_trainable_state_dict(
        model, {k: torch.from_numpy(np.asarray(v)).to(own[k].dtype) for k, v in arrays.items()}
    )


def with_backbone(cfg: FLConfig, path: Path) -> FLConfig:
    return replace(cfg, backbone=str(path))
