"""A trained fedhar model as files: LoRA adapters in peft's own format, the head, the backbone.

MODEL_DIR/
  adapter_model.safetensors + adapter_config.json
                      the encoder's LoRA adapters as ``PeftModel.save_pretrained`` writes them:
                      ``PeftModel.from_pretrained(encoder, MODEL_DIR)`` or
                      ``set_peft_model_state_dict`` load them onto the fedhar backbone's encoder
                      (``load_model`` does it). In full fine-tuning ``encoder.safetensors``
                      holds the whole trained encoder instead.
  head.safetensors    the classification head (absent where heads stay on their clients)
  backbone.safetensors
                      the frozen MAE backbone the adapters belong to (a copy: the folder stands alone)
  fedhar_model.json   mode, rank, alpha, n_classes, label space (the head's outputs, in order), ...

Every .safetensors file carries a SHA-256 of its tensors in its metadata (``sha256``, beside
peft's ``format``), checked with finiteness on loading: a damaged file is an error naming it,
never a model scored as if intact. Files are written atomically (a temporary name, then a rename).

Federated runs add their own files (simulations/export.py): dense base updates, clients' local parts.
Inputs are z-normalised per dataset and channel before the model (``score`` does it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from fedhar.errors import FedharError
from fedhar.model.checkpoint import atomic_path, read_tensors, write_tensors

META = "fedhar_model.json"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the encoder: its keys start with this


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Atomically, with the tensors' SHA-256 (``load_tensors`` checks it)."""
    write_tensors({k: v.detach().cpu() for k, v in tensors.items()}, path, {"format": "pt"})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A saved part's tensors; a damaged file is an error naming it (files saved before the
    checksum was added are checked for finiteness only)."""
    return read_tensors(path)[0]


def read_json(path: Path):
    """A model folder's JSON file; an unreadable or damaged one is an error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FedharError(f"{path}: damaged ({e})") from None


def copy_atomically(source: str | Path, path: Path) -> None:
    """``shutil.copyfile`` to a temporary name, then a rename: a full disk leaves no partial copy."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def save_model(model, model_dir: str | Path, backbone: str | Path, label_space, rank: int, alpha: float,
               head: bool = True, **meta) -> Path:
    """Write MODEL_DIR (above) for a fine-tuned Classifier; ``meta`` is added to fedhar_model.json."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    mode = model.finetune_mode
    if head:
        save_tensors(model.head.state_dict(), model_dir / "head.safetensors")
    if mode == "full":
        save_tensors(model.encoder.state_dict(), model_dir / "encoder.safetensors")
    elif mode != "probe":  # a probe trains the head alone: the backbone copy is its encoder
        from peft import get_peft_model_state_dict

        adapters = get_peft_model_state_dict(model.encoder)
        save_tensors({PEFT_PREFIX + k: v for k, v in adapters.items()}, model_dir / "adapter_model.safetensors")
        model.encoder.peft_config["default"].save_pretrained(str(model_dir))
    copy_atomically(backbone, model_dir / "backbone.safetensors")
    (model_dir / META).write_text(json.dumps({
        "mode": mode, "rank": rank, "lora_alpha": alpha, "n_classes": model.head.n_classes,
        "label_space": list(label_space), "head": "shared" if head else "local", **meta}, indent=1))
    return model_dir


def load_model(model_dir: str | Path, client: str | None = None):
    """(model, meta): the fedhar Classifier of a saved run, ready to evaluate.

    The LoRA adapters are loaded with peft's ``set_peft_model_state_dict`` from peft's own
    files; ``client`` adds that client's local parts (needed where heads are local)."""
    from fedhar.model import Classifier
    from fedhar.model.adapters import prepare_for_finetune
    from fedhar.model.base_delta import add_base_deltas  # FedEx / FLoRA dense updates (simulations/export.py)
    from fedhar.model.checkpoint import load_mae

    model_dir = Path(model_dir)
    if not (model_dir / META).exists():
        raise FedharError(f"{model_dir}: not a fedhar model folder (no {META}; a run writes OUT_DIR/model)")
    meta = read_json(model_dir / META)
    model = Classifier.from_mae(load_mae(model_dir / "backbone.safetensors"), meta["n_classes"])
    if meta["mode"] != "probe":
        prepare_for_finetune(model, meta["mode"], rank=meta["rank"], alpha=meta["lora_alpha"])
    if meta["mode"] == "full":
        model.encoder.load_state_dict(load_tensors(model_dir / "encoder.safetensors"))
    elif meta["mode"] != "probe":
        from peft import set_peft_model_state_dict

        adapters = load_tensors(model_dir / "adapter_model.safetensors")
        result = set_peft_model_state_dict(model.encoder, {k.removeprefix(PEFT_PREFIX): v for k, v in adapters.items()})
        unexpected = getattr(result, "unexpected_keys", None)  # torch's _IncompatibleKeys (peft's annotation is vaguer)
        if unexpected:
            raise FedharError(f"{model_dir / 'adapter_model.safetensors'}: tensors the model does not have: "
                              f"{unexpected[:3]}")
    clients = sorted(p.name for p in (model_dir / "clients").glob("*")) if (model_dir / "clients").is_dir() else []
    if meta["head"] == "shared":
        model.head.load_state_dict(load_tensors(model_dir / "head.safetensors"))
    elif client is None:
        raise FedharError(f"{model_dir}: heads are local to each client; name one with --client "
                          f"({', '.join(clients)})")
    if client is not None:
        from fedhar.options import check_name

        folder = model_dir / "clients" / check_name("client", client.replace("/", "_").replace(":", "_"), clients)
        local = load_tensors(folder / "local.safetensors")
        if any(k.startswith("head.") for k in local):
            meta = {**meta, "label_space": read_json(folder / "labels.json")}
        _load_local(model, local)
    if (model_dir / "base_deltas.safetensors").exists():
        add_base_deltas(model, {k: v.numpy() for k, v in load_tensors(model_dir / "base_deltas.safetensors").items()})
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
    from fedhar.data.labels import encode_open  # an unknown activity counts as an error
    from fedhar.data.splits import Normaliser
    from fedhar.model import evaluate

    model, meta = load_model(model_dir, client)
    ws = load(data, data_dir, synthetic=synthetic).windows
    ws = Normaliser.fit(ws).apply(ws)
    labels = LabelSpace(tuple(meta["label_space"]))
    y, out_of_space = encode_open(labels, ws.y, model.head.n_classes)
    metrics = evaluate(model, ws.x, y)
    return {"model": str(model_dir), "data": data, "client": client or "", "windows": len(ws),
            "out_of_space": out_of_space, **metrics}
