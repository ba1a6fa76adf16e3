"""Server-side evaluation: the global model on data the server holds, once per round.

Two kinds of data (rows in clients.csv, client named ``<phase>:<dataset>``):

  server   (server_test_fraction > 0) per dataset of the federation, its test subjects:
           the very subjects the centralised LODO baseline tests on (same seed, train
           fraction 1 - server_test_fraction; see ``task.server_test_mask``). No client
           ever holds them. z-normalised with the federation's per-dataset training
           statistics (``Federation.norm``).
  heldout  (heldout_data) datasets no client holds and the backbone never saw, split by
           subject as LODO does (test share ``cfg.heldout_test_fraction``), z-normalised
           with the statistics of their own training subjects. "synthetic" is a separate
           synthetic draw (seed + HELDOUT_SEED_OFFSET), pooled over its domains in one row.

How (column ``evaluation``):

  direct   the global model as it is (global adapters + shared head). Used when the head
           is shared and, for held-out data, every class of the dataset lies in the
           federation's label space.
  probe    a fresh head, trained for ``probe_epochs`` on the pooled features of the
           frozen global encoder (adapters and dense base updates loaded), evaluated on the
           test subjects. Used when there is no global head (head = local) or the held-out
           labels leave the federation's space. The probe trains on the held-out dataset's
           training subjects, or, for a federation dataset with local heads, on that
           dataset's training subjects (the clients' windows, used here for evaluation
           only: nothing of it reaches the federated model).

Test windows whose label the evaluated head has no output for are never dropped: they
count as errors, and their number is the column ``out_of_space``.

What is evaluated is what the clients receive (``strategy.downlink``): FedEx-LoRA's and
FLoRA's dense base updates are added to the backbone; FedSA-LoRA has no global B, so its
global model is the averaged A with B = 0, i.e. the backbone with the shared head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedhar.data import LabelSpace, WindowSet
from fedhar.data.splits import Normaliser
from fedhar.finetune import frozen_features
from fedhar.model import classification_metrics, evaluate, finetune_epoch, make_loader
from fedhar.model.head import ClassificationHead
from simulations.config import FLConfig
from simulations.task import (
    Federation,
    add_base_deltas,
    build_model,
    encode_open,
    head_size,
    is_head_key,
    load_partial,
    load_windows,
    server_test_mask,
)
from strategies.records import DELTA_SUFFIX, is_delta_key


@dataclass
class EvalSet:
    """One row per evaluation: test windows (normalised, global label ids) and, for a
    probe, the windows its head trains on."""

    phase: str  # "server" | "heldout"
    name: str  # dataset
    test: WindowSet
    probe_train: WindowSet | None  # None: evaluate the global model directly
    test_subjects: list[int]

    @property
    def evaluation(self) -> str:
        return "direct" if self.probe_train is None else "probe"


def server_sets(cfg: FLConfig, fed: Federation) -> list[EvalSet]:
    """Per dataset of the federation, its server-held test subjects (none if the server holds none)."""
    if not len(fed.server_test):
        return []
    test_all = fed.norm.apply(fed.server_test)
    out = []
    for name in test_all.datasets():
        test = test_all.subset(test_all.dataset == name)
        probe = None
        if fed.head == "local":  # no global head: probe on the dataset's training subjects
            probe = fed.norm.apply(fed.windows.subset(fed.windows.dataset == name))
        out.append(EvalSet("server", name, test, probe, sorted(np.unique(test.subject).tolist())))
    return out


def heldout_sets(cfg: FLConfig, fed: Federation) -> list[EvalSet]:
    """Each held-out dataset: LODO's subject split, normalised with its own training statistics."""
    out = []
    for name in cfg.heldout_datasets:
        ws = load_windows([name], cfg, heldout=True)
        is_test = server_test_mask(ws, cfg.heldout_test_fraction, cfg.seed)
        train, test = ws.subset(~is_test), ws.subset(is_test)
        norm = Normaliser.fit(train)
        train, test = norm.apply(train), norm.apply(test)
        in_space = set(LabelSpace.from_ids(ws.y).names) <= set(fed.labels.names)
        probe = None if fed.head == "shared" and in_space else train
        subjects = sorted(f"{d}/{s}" for d, s in set(zip(test.dataset.tolist(), test.subject.tolist())))
        out.append(EvalSet("heldout", name, test, probe, subjects))
    return out


class ServerEvaluator:
    """Evaluates global arrays on the server's data; ``run`` returns one row per data set."""

    def __init__(self, cfg: FLConfig, fed: Federation, backbone: Path):
        self.cfg, self.fed, self.backbone = cfg, fed, Path(backbone)
        self.sets = server_sets(cfg, fed) + heldout_sets(cfg, fed)

    @property
    def active(self) -> bool:
        return bool(self.sets)

    def describe(self) -> dict:
        """For config.json: what the server evaluates on, and how."""
        return {f"{s.phase}:{s.name}": {"evaluation": s.evaluation, "test_windows": len(s.test),
                                        "test_subjects": s.test_subjects} for s in self.sets}

    def global_model(self, arrays: dict[str, np.ndarray]):
        """The server's model with the global arrays: adapters (+ head if shared), base updates."""
        model = build_model(self.cfg, self.fed.labels.size, self.backbone)
        deltas = {k[: -len(DELTA_SUFFIX)]: v for k, v in arrays.items() if is_delta_key(k)}
        load_partial(model, {k: v for k, v in arrays.items() if not is_delta_key(k)})
        add_base_deltas(model, deltas)
        model.eval()
        return model

    def run(self, server_round: int, arrays: dict[str, np.ndarray]) -> list[dict]:
        if self.fed.head == "local" and any(is_head_key(k) for k in arrays):
            raise ValueError("head = local, but the global arrays carry head tensors")
        model = self.global_model(arrays)
        rows = []
        for s in self.sets:
            if s.probe_train is None:
                labels = self.fed.labels
                y, out_of_space = encode_open(labels, s.test.y, labels.size)
                m = evaluate(model, s.test.x, y)
            else:
                m, out_of_space = self.probe(model, s)
            rows.append({"round": server_round, "phase": s.phase, "client": f"{s.phase}:{s.name}",
                         "status": "ok", "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                         "precision": m["macro_precision"], "recall": m["macro_recall"],
                         "num_examples": m["n"], "out_of_space": out_of_space, "evaluation": s.evaluation})
        return rows

    def probe(self, model, s: EvalSet) -> tuple[dict, int]:
        """A fresh head on the frozen global encoder: trained on s.probe_train, tested on s.test.

        The encoder is frozen, so its pooled features are computed once (eval mode) and the
        head trains on them: the same as training the head through the encoder, much cheaper.
        """
        labels = LabelSpace.from_ids(s.probe_train.y)
        n_out = head_size(labels)
        train_f, test_f = frozen_features(model.encoder, s.probe_train.x), frozen_features(model.encoder, s.test.x)
        torch.manual_seed(self.cfg.seed)
        head = ClassificationHead(train_f.shape[1], n_out)
        optimizer = torch.optim.AdamW(head.parameters(), lr=self.cfg.lr, weight_decay=0.01)
        loader = make_loader(train_f, labels.encode(s.probe_train.y), self.cfg.batch_size, shuffle=True,
                             seed=self.cfg.seed)
        for _ in range(self.cfg.probe_epochs):
            finetune_epoch(head, loader, optimizer)
        head.eval()
        with torch.no_grad():
            pred = head(test_f).argmax(dim=1).numpy()
        y, out_of_space = encode_open(labels, s.test.y, n_out)
        return classification_metrics(y, pred), out_of_space

