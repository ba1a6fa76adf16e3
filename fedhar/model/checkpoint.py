"""Safetensors checkpoints: the pretrained MAE, and trainable (adapter + head) states.

An MAE checkpoint holds the float32 state dict of the whole MAE (encoder and decoder;
the sin-cos positional encodings are rebuilt, not stored) and, as safetensors metadata,
``format = "fedhar-mae-1"`` and ``config`` = the JSON of ``MAEConfig``, so
``load_mae(path)`` rebuilds the model without being told its shape.

Every checkpoint written here also carries ``sha256``, a hash of its tensors, checked on
loading together with finiteness: a damaged file (bytes overwritten, NaN weights) is an
error naming it, never a model that silently fails to train.

A trainable checkpoint holds ``trainable_state_dict(model)`` with
``format = "fedhar-trainable-1"`` and free-form string metadata (e.g. mode, rank).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                 if state[key].numel() else b"")
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """A unique temporary name beside ``path`` to write, renamed to ``path`` when the block
    succeeds and removed when it fails: a reader never sees half a file, a full disk leaves
    none. A failure of the file system names ``path`` (not the temporary name)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    except SafetensorError as e:  # safetensors' own wrapping of a failed write
        raise CheckpointError(f"{path}: cannot be written ({e})") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_tensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Atomically (``atomic_path``), with the tensors' hash in the metadata (``sha256``)."""
    state = _contiguous(state)
    metadata = {**metadata, "sha256": tensors_sha256(state)}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata=metadata)


def read_tensors(path: str | Path, expected_format: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a damaged one (unreadable, not matching its
    ``sha256``, non-finite weights) or one of another ``format`` is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    if expected_format is not None and metadata.get("format") != expected_format:
        raise CheckpointError(f"{path}: format {metadata.get('format')!r}, expected {expected_format!r}")
    if "sha256" in metadata and tensors_sha256(tensors) != metadata["sha256"]:
        raise CheckpointError(f"{path}: the checkpoint is damaged (its weights do not match their checksum)")
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{path}: the checkpoint is damaged (non-finite weights in {', '.join(bad[:3])})")
    return tensors, metadata


def save_mae(mae: MaskedAutoencoder, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Save the MAE; ``extra`` string metadata (e.g. the data fingerprint) is stored beside its config."""
    metadata = {str(k): str(v) for k, v in (extra or {}).items()}
    metadata.update({"format": MAE_FORMAT, "config": json.dumps(mae.config.to_dict(), sort_keys=True)})
    write_tensors(mae.state_dict(), path, metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors checkpoint (format, config, and any extra)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def load_mae(path: str | Path) -> MaskedAutoencoder:
    tensors, metadata = read_tensors(path, MAE_FORMAT)
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
    write_tensors(state, path, meta)


def load_trainable(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return read_tensors(path, TRAINABLE_FORMAT)
