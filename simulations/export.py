"""The trained model of a federated run, as files other programs load.

OUT_DIR/model/ after the last round:

  adapter_model.safetensors, adapter_config.json, head.safetensors, backbone.safetensors,
  fedhar_model.json   the global model, as fedhar.model.saved describes (peft's own format)
  base_deltas.safetensors
                      FedEx-LoRA's / FLoRA's dense updates of the frozen weights (W + delta)
  clients/<client>/local.safetensors
                      what a rule keeps on a client, written by the client itself: FedSA-LoRA's
                      B matrices, a local head. On a deployment they stay on each client's disk.

Load with ``fedhar.model.saved.load_model`` (or peft itself); score with ``fedhar evaluate``.
What the global model is matches the server's evaluation (``ServerEvaluator.global_model``):
FedSA-LoRA has no global B, so its global adapters have B = 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fedhar.model.saved import save_model, save_tensors

MODEL_DIR = "model"


def save_global_model(cfg, fed, arrays: dict[str, np.ndarray], out_dir: Path, server_round: int) -> Path:
    """Write OUT_DIR/model/ from the global arrays the clients would receive next."""
    from simulations.task import build_model, load_partial
    from strategies.records import DELTA_SUFFIX, is_delta_key

    model = build_model(cfg, fed.labels.size, Path(cfg.backbone))
    load_partial(model, {k: v for k, v in arrays.items() if not is_delta_key(k)})
    model_dir = save_model(model, Path(out_dir) / MODEL_DIR, cfg.backbone, fed.labels.names, cfg.max_rank,
                           cfg.lora_alpha, head=fed.head == "shared", clients=fed.client_names,
                           strategy=cfg.strategy, data=cfg.data, round=server_round, seed=cfg.seed)
    deltas = {k[: -len(DELTA_SUFFIX)]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if is_delta_key(k)}
    if deltas:
        save_tensors(deltas, model_dir / "base_deltas.safetensors")
    return model_dir


def save_local_parts(out_dir: str, client: str, tensors: dict[str, torch.Tensor], labels: list[str]) -> None:
    """A client's parts that never travel (FedSA's B, a local head: its label names too)."""
    if not out_dir or not tensors:
        return
    folder = Path(out_dir) / MODEL_DIR / "clients" / client.replace("/", "_").replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, folder / "local.safetensors")
    (folder / "labels.json").write_text(json.dumps(labels))
