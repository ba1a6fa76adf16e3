"""What a client process keeps between ClientApp calls: the model it builds.

Building a client's model (``task.build_model``: a Classifier from the MAE backbone, peft's
adapter injection, for QLoRA the NF4 quantisation) costs more than a client's whole local
training on a small partition. A process (the inline engine, a Ray actor, a SuperNode) runs
many calls, mostly with the same configuration, so it builds each distinct model once and
hands out the cached one, reset to exactly the state a fresh build has:

* every trainable parameter and every buffer (the head's BatchNorm statistics) copied back
  from a snapshot taken right after the build; frozen weights are never written to;
* gradients cleared, forward hooks added since the build removed (FedEx / FLoRA's base
  deltas), training mode back on;
* the global torch generator set to the state it had right after the build, so dropout and
  anything else drawing from it in the call draws what it would have after a fresh build.

So results are bit-identical to building afresh (tests/test_client_cache.py, and the
committed reference runs in tests/fixtures/reference_runs/). The key holds everything
``build_model`` reads; the pid enters only through its mode and rank, so clients with the
same mode and rank share one model (their differences are the arrays loaded into it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedhar.model import Classifier
from simulations.config import FLConfig

MAX_MODELS = 4  # distinct (mode, rank, head, seed) models per process: FLoRA adds one per round


@dataclass
class _Built:
    model: Classifier
    snapshot: list[tuple[torch.Tensor, torch.Tensor]]  # (trainable parameter or buffer, its value as built)
    params: list[torch.nn.Parameter]
    rng: torch.Tensor  # the global torch generator's state right after the build
    hooks: list[tuple[torch.nn.Module, set[int]]]  # (module, forward hook ids present after the build)


_models: OrderedDict[tuple, _Built] = OrderedDict()


def cache_key(cfg: FLConfig, n_classes: int, backbone: Path, pid: int, seed: int | None,
         head_classes: int | None) -> tuple:
    return (cfg.client_mode(pid), cfg.client_rank(pid), cfg.lora_alpha, cfg.fused_lora, cfg.strategy, cfg.device,
            cfg.seed if seed is None else seed, n_classes, head_classes, str(Path(backbone).resolve()))


def _built(model: Classifier) -> _Built:
    """What resetting needs, gathered once (walking the peft model's modules costs more than
    copying its adapters)."""
    tensors = [p for p in model.parameters() if p.requires_grad] + list(model.buffers())
    return _Built(model, [(t, t.detach().clone()) for t in tensors], list(model.parameters()),
                  torch.get_rng_state(), [(m, set(m._forward_hooks)) for m in model.modules()])


def client_model(cfg: FLConfig, n_classes: int, backbone: Path, pid: int, seed: int | None = None,
                 head_classes: int | None = None) -> Classifier:
    """``task.build_model(cfg, n_classes, backbone, pid, seed, head_classes)``, built once per
    process and reset to its freshly built state on every later call (see module docstring)."""
    from simulations.task import build_model  # here: the benchmarks time build_model itself

    key = cache_key(cfg, n_classes, backbone, pid, seed, head_classes)
    built = _models.get(key)
    if built is None:
        model = build_model(cfg, n_classes, backbone, pid, seed, head_classes, device=cfg.device)
        built = _models[key] = _built(model)
        while len(_models) > MAX_MODELS:
            _models.popitem(last=False)
        return model
    _models.move_to_end(key)
    model = built.model
    with torch.no_grad():
        for tensor, value in built.snapshot:
            tensor.copy_(value)
    for p in built.params:
        p.grad = None
    for module, ids in built.hooks:
        if len(module._forward_hooks) != len(ids):
            for hook_id in set(module._forward_hooks) - ids:
                del module._forward_hooks[hook_id]
    model.train()
    torch.set_rng_state(built.rng)
    return model


def warm(cfg: FLConfig, n_classes: int, backbone: Path, pid: int, head_classes: int | None = None) -> None:
    """Build the model now unless this process has it: the first build (peft's import alone is
    ~8 CPU s, per Ray actor) then happens before the rounds, not in the first one."""
    if cache_key(cfg, n_classes, backbone, pid, None, head_classes) not in _models:
        client_model(cfg, n_classes, backbone, pid, None, head_classes)


def clear() -> None:
    _models.clear()


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of the arrays a record holds, from their shapes and dtypes: no deserialisation."""
    return int(sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in record.values()))
