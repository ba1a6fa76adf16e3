"""Classification head and the fine-tuning model ``Classifier(encoder, head)``.

The classifier mean-pools the encoder tokens (no [CLS] token, no masking at fine-tune
time) and feeds the pooled vector to a small MLP:
    Linear(dim, 128) - BatchNorm1d(128) - GELU - Dropout(0.2) - Linear(128, n_classes)
Outputs are logits over class indices 0..n_classes-1; mapping global activity ids to
those indices is the caller's business.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedhar.model.mae import Encoder, MaskedAutoencoder


class ClassificationHead(nn.Sequential):
    def __init__(self, dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.2):
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        super().__init__(
            nn.Linear(dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )
        self.n_classes = n_classes


class Classifier(nn.Module):
    """Encoder followed by mean-pooling and a classification head.

    ``finetune_mode`` is set by ``fedhar.model.adapters.prepare_for_finetune``
    ("full", "lora" or "qlora"; None before).
    """

    def __init__(self, encoder: Encoder, head: ClassificationHead):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.finetune_mode: str | None = None

    @classmethod
    def from_mae(cls, mae: MaskedAutoencoder, n_classes: int, hidden: int = 128,
                 dropout: float = 0.2) -> Classifier:
        """A classifier on a deep copy of a pretrained MAE's encoder (the MAE stays untouched)."""
        encoder = copy.deepcopy(mae.encoder)
        return cls(encoder, ClassificationHead(encoder.config.dim, n_classes, hidden, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))
