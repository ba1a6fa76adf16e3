"""The trained model of a federated run, as files other programs load.

OUT_DIR/model/ after the last round:

  adapter_model.safetensors + adapter_config.json
                      the global LoRA adapters of the encoder in peft's own format (what
                      ``PeftModel.save_pretrained`` writes): ``PeftModel.from_pretrained(encoder,
                      dir)`` or ``set_peft_model_state_dict`` load them onto the fedhar backbone
                      (``fedhar.load_model`` does it for you). Absent in full fine-tuning, where
                      ``encoder.safetensors`` holds the whole trained encoder instead.
  head.safetensors    the global classification head (absent when heads are local)
  base_deltas.safetensors
                      FedEx-LoRA's / FLoRA's dense updates of the frozen weights (W + delta)
  backbone.safetensors
                      the frozen MAE backbone the adapters belong to (a copy: the folder stands alone)
  fedhar_model.json   mode, rank, alpha, label space, head kind, strategy, data, round
  clients/<client>/local.safetensors
                      what a rule keeps on a client, written by the client itself: FedSA-LoRA's
                      B matrices, a local head. On a deployment they stay on each client's disk.

What the global model is matches the server's evaluation (``ServerEvaluator.global_model``):
FedSA-LoRA has no global B, so its global adapters have B = 0.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedhar.errors import FedharError
from fedhar.model import trainable_state_dict

MODEL_DIR = "model"
META = "fedhar_model.json"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the encoder: its keys start with this


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Atomically: a reader never sees half a file."""
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def save_global_model(cfg, fed, arrays: dict[str, np.ndarray], out_dir: Path, server_round: int) -> Path:
    """Write OUT_DIR/model/ from the global arrays the clients would receive next."""
    from simulations.task import build_model, load_partial
    from strategies.lora_strategies import DELTA_SUFFIX, is_delta_key

    model = build_model(cfg, fed.labels.size, Path(cfg.backbone))
    load_partial(model, {k: v for k, v in arrays.items() if not is_delta_key(k)})
    deltas = {k[: -len(DELTA_SUFFIX)]: v for k, v in arrays.items() if is_delta_key(k)}
    model_dir = Path(out_dir) / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    state = trainable_state_dict(model)
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    if fed.head == "shared":
        _save(head, model_dir / "head.safetensors")
    if cfg.mode == "full":
        _save({k.removeprefix("encoder."): v for k, v in model.encoder.state_dict().items()},
              model_dir / "encoder.safetensors")
    else:
        from peft import get_peft_model_state_dict

        adapters = get_peft_model_state_dict(model.encoder)
        _save({PEFT_PREFIX + k: v for k, v in adapters.items()}, model_dir / "adapter_model.safetensors")
        model.encoder.peft_config["default"].save_pretrained(str(model_dir))
    if deltas:
        _save({k: torch.from_numpy(np.asarray(v)) for k, v in deltas.items()}, model_dir / "base_deltas.safetensors")
    shutil.copyfile(cfg.backbone, model_dir / "backbone.safetensors")
    (model_dir / META).write_text(json.dumps({
        "mode": cfg.mode, "rank": cfg.max_rank, "lora_alpha": cfg.lora_alpha, "n_classes": fed.labels.size,
        "label_space": list(fed.labels.names), "head": fed.head, "clients": fed.client_names, "strategy": cfg.strategy,
        "data": cfg.data, "round": server_round, "seed": cfg.seed,
        "normalise": "z-normalise each dataset with its own per-channel statistics before the model",
    }, indent=1))
    return model_dir


def save_local_parts(out_dir: str, client: str, tensors: dict[str, torch.Tensor], labels: list[str]) -> None:
    """A client's parts that never travel (FedSA's B, a local head: its label names too)."""
    if not out_dir or not tensors:
        return
    folder = Path(out_dir) / MODEL_DIR / "clients" / client.replace("/", "_").replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    _save(tensors, folder / "local.safetensors")
    (folder / "labels.json").write_text(json.dumps(labels))


def load_model(model_dir: str | Path, client: str | None = None):
    """(model, meta): the fedhar Classifier of a saved run, ready to evaluate.

    The LoRA adapters are loaded with peft's ``set_peft_model_state_dict`` from peft's own
    files; ``client`` adds that client's local parts (needed where heads are local)."""
    from fedhar.model import Classifier
    from fedhar.model.adapters import prepare_for_finetune
    from fedhar.model.checkpoint import load_mae
    from simulations.task import add_base_deltas

    model_dir = Path(model_dir)
    if not (model_dir / META).exists():
        raise FedharError(f"{model_dir}: not a fedhar model folder (no {META}; a run writes OUT_DIR/{MODEL_DIR})")
    meta = json.loads((model_dir / META).read_text())
    model = Classifier.from_mae(load_mae(model_dir / "backbone.safetensors"), meta["n_classes"])
    prepare_for_finetune(model, meta["mode"], rank=meta["rank"], alpha=meta["lora_alpha"])
    if meta["mode"] == "full":
        model.encoder.load_state_dict(load_file(str(model_dir / "encoder.safetensors")))
    else:
        from peft import set_peft_model_state_dict

        adapters = load_file(str(model_dir / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model.encoder, {k.removeprefix(PEFT_PREFIX): v for k, v in adapters.items()})
        if getattr(result, "unexpected_keys", None):
            raise FedharError(f"{model_dir / 'adapter_model.safetensors'}: tensors the model does not have: "
                              f"{result.unexpected_keys[:3]}")
    clients = sorted(p.name for p in (model_dir / "clients").glob("*")) if (model_dir / "clients").is_dir() else []
    if meta["head"] == "shared":
        model.head.load_state_dict(load_file(str(model_dir / "head.safetensors")))
    elif client is None:
        raise FedharError(f"{model_dir}: heads are local to each client; name one with --client "
                          f"({', '.join(clients)})")
    if client is not None:
        from fedhar.options import check_name

        folder = model_dir / "clients" / check_name("client", client.replace("/", "_").replace(":", "_"), clients)
        local = load_file(str(folder / "local.safetensors"))
        if any(k.startswith("head.") for k in local):
            meta = {**meta, "label_space": json.loads((folder / "labels.json").read_text())}
        _load_local(model, local)
    if (model_dir / "base_deltas.safetensors").exists():
        add_base_deltas(model, {k: v.numpy() for k, v in load_file(str(model_dir / "base_deltas.safetensors")).items()})
    model.eval()
    return model, meta


def _load_local(model, local: dict[str, torch.Tensor]) -> None:
    from fedhar.model.head import ClassificationHead

    head = {k.removeprefix("head."): v for k, v in local.items() if k.startswith("head.")}
    if head:  # a local head is sized to its client's labels
        n_out = [v for k, v in head.items() if k.endswith("weight") and v.ndim == 2][-1].shape[0]
        model.head = ClassificationHead(model.encoder.config.dim, n_out)
        model.head.load_state_dict(head)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in local.items():
            if not k.startswith("head."):
                own[k].copy_(v)


def score(model_dir: str | Path, data: str, data_dir: str | Path | None = None, client: str | None = None,
          synthetic=None) -> dict:
    """Accuracy, macro-F1 (and precision, recall) of a saved model on every window of ``data``,
    each dataset z-normalised with its own statistics. A window whose activity the head has
    no output for counts as an error (``out_of_space``), never dropped."""
    from fedhar.data import LabelSpace, load
    from fedhar.data.splits import Normaliser
    from fedhar.model import evaluate
    from simulations.task import encode_open

    model, meta = load_model(model_dir, client)
    ws = load(data, data_dir, synthetic=synthetic).windows
    ws = Normaliser.fit(ws).apply(ws)
    labels = LabelSpace(tuple(meta["label_space"]))
    y, out_of_space = encode_open(labels, ws.y, model.head.n_classes)
    metrics = evaluate(model, ws.x, y)
    return {"model": str(model_dir), "data": data, "client": client or "", "windows": len(ws),
            "out_of_space": out_of_space, **metrics}
