"""Safetensors checkpoints: the pretrained MAE, and trainable (adapter + head) states.

An MAE checkpoint holds the float32 state dict of the whole MAE (encoder and decoder;
the sin-cos positional encodings are rebuilt, not stored) and, as safetensors metadata,
``format = "fedhar-mae-1"`` and ``config`` = the JSON of ``MAEConfig``, so
``load_mae(path)`` rebuilds the model without being told its shape.

A trainable checkpoint holds ``trainable_state_dict(model)`` with
``format = "fedhar-trainable-1"`` and free-form string metadata (e.g. mode, rank).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from fedhar.errors import FedharError
from fedhar.model.mae import MAEConfig, MaskedAutoencoder

MAE_FORMAT = "fedhar-mae-1"
TRAINABLE_FORMAT = "fedhar-trainable-1"


class CheckpointError(FedharError):
    """A checkpoint is missing, unreadable or of the wrong kind."""


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _read(path: str | Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if metadata.get("format") != expected_format:
        raise CheckpointError(f"{path}: format {metadata.get('format')!r}, expected {expected_format!r}")
    return tensors, metadata


def save_mae(mae: MaskedAutoencoder, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Save the MAE; ``extra`` string metadata (e.g. the data fingerprint) is stored beside its config."""
    metadata = {str(k): str(v) for k, v in (extra or {}).items()}
    metadata.update({"format": MAE_FORMAT, "config": json.dumps(mae.config.to_dict(), sort_keys=True)})
    save_file(_contiguous(mae.state_dict()), str(path), metadata=metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors checkpoint (format, config, and any extra)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def load_mae(path: str | Path) -> MaskedAutoencoder:
    tensors, metadata = _read(path, MAE_FORMAT)
    try:
        config = MAEConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad MAE config metadata ({e})") from e
    mae = MaskedAutoencoder(config)
    try:
        mae.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the stored config ({e})") from e
    return mae


def save_trainable(state: dict[str, torch.Tensor], path: str | Path,
                   metadata: dict[str, str] | None = None) -> None:
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta["format"] = TRAINABLE_FORMAT
    save_file(_contiguous(state), str(path), metadata=meta)


def load_trainable(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return _read(path, TRAINABLE_FORMAT)
