"""Training and evaluation helpers: MAE pretraining step, fine-tuning epoch, metrics.

Metrics are computed by hand with numpy (no scikit-learn dependency) and match
scikit-learn's macro averages with ``zero_division=0``: per class, precision =
TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R), each 0 where its
denominator is 0; macro = unweighted mean over the classes considered (by default the
union of true and predicted classes, as scikit-learn does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedhar.model.mae import MaskedAutoencoder


def _as_tensor(a, dtype, device=None) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t.to(device=device, dtype=dtype)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def pretrain_step(mae: MaskedAutoencoder, batch, optimizer: torch.optim.Optimizer) -> float:
    """One MAE optimisation step on windows (N, 6, 128); returns the masked-patch MSE."""
    mae.train()
    optimizer.zero_grad(set_to_none=True)
    loss = mae(_as_tensor(batch, torch.float32, _device(mae))).loss
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def make_loader(x, y, batch_size: int = 64, shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader of (windows float32, class index int64) with a seeded shuffle."""
    dataset = TensorDataset(_as_tensor(x, torch.float32), _as_tensor(y, torch.int64))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


@dataclass
class EpochStats:
    loss: float  # mean cross-entropy over the samples trained on
    samples: int  # samples trained on
    skipped: int  # samples in size-1 batches, left out: BatchNorm cannot train on one sample


def finetune_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                   criterion: nn.Module | None = None) -> EpochStats:
    """One pass over ``loader`` (pairs of windows, class indices) in training mode."""
    criterion = criterion or nn.CrossEntropyLoss()
    model.train()
    device = _device(model)
    total, samples, skipped = 0.0, 0, 0
    for x, y in loader:
        x, y = _as_tensor(x, torch.float32, device), _as_tensor(y, torch.int64, device)
        if len(x) < 2:
            skipped += len(x)
            continue
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(x)
        samples += len(x)
    return EpochStats(total / samples if samples else float("nan"), samples, skipped)


@torch.no_grad()
def predict(model: nn.Module, x, batch_size: int = 1024) -> np.ndarray:
    """Predicted class indices in eval mode; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        x, device = _as_tensor(x, torch.float32), _device(model)
        preds = [model(x[i:i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


def classification_metrics(y_true, y_pred, classes=None) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 (see module docstring)."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero samples")
    classes = np.union1d(y_true, y_pred) if classes is None else np.asarray(classes, np.int64)
    tp = np.array([np.sum((y_true == c) & (y_pred == c)) for c in classes], np.float64)
    predicted = np.array([np.sum(y_pred == c) for c in classes], np.float64)
    actual = np.array([np.sum(y_true == c) for c in classes], np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "n": int(len(y_true)),
    }


def evaluate(model: nn.Module, x, y, classes=None, batch_size: int = 1024) -> dict[str, float]:
    """Accuracy, macro-F1, macro precision and recall of ``model`` on windows ``x``."""
    return classification_metrics(y, predict(model, x, batch_size), classes)
