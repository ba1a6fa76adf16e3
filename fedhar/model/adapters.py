"""Fine-tuning modes (full / LoRA / QLoRA) and what they train, store and exchange.

``prepare_for_finetune(classifier, mode, ...)`` changes a fresh ``Classifier`` in place:

full   everything trains (encoder and head).
lora   the encoder is frozen; HF peft injects LoRA adapters (``LoraConfig``: rank,
       alpha, dropout, target_modules = the named linears q, k, v, o, w1, w2 by default)
       into the encoder; the adapters and the head train. peft initialises B = 0, so at
       step 0 the model computes exactly what the frozen backbone does.
qlora  as lora, but first every target linear of the encoder is replaced by a frozen
       bitsandbytes NF4 ``Linear4bit`` (compute dtype float32, blocksize and double
       quantisation configurable, quantised on the CPU; see fedhar.model.quantize); peft
       then wraps those layers. Adapters and head stay float32. Non-target encoder
       weights (patch embedding, LayerNorms, biases) stay float32 and frozen.

Adapters are injected with ``peft.inject_adapter_in_model`` on the encoder, so module
names stay those of the plain model (``encoder.blocks.0.attn.q.lora_A.default.weight``)
and the head needs no peft ``modules_to_save`` copy.

What a client exchanges is ``trainable_state_dict``: every trainable parameter plus the
persistent buffers of the modules that own them (the head's BatchNorm running
statistics, needed to reproduce eval outputs exactly).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from fedhar.model.head import Classifier
from fedhar.model.quantize import logical_numel, quantize_linear_nf4, stored_bytes

MODES = ("full", "lora", "qlora")
DEFAULT_TARGETS = ("q", "k", "v", "o", "w1", "w2")


def prepare_for_finetune(classifier: Classifier, mode: str, rank: int = 8, alpha: float = 16,
                         dropout: float = 0.0, targets: tuple[str, ...] = DEFAULT_TARGETS,
                         nf4_blocksize: int = 64, double_quant: bool = True, fused: bool = False) -> Classifier:
    """Set ``classifier`` up for one fine-tuning mode, in place; returns it. ``fused``: LoRA
    layers compute base + adapter in fewer passes (fedhar.model.fused_lora; same keys,
    results equal to peft's within float rounding, not bit for bit)."""
    if mode not in MODES:
        raise ValueError(f"unknown fine-tuning mode {mode!r}; choose one of {MODES}")
    if classifier.finetune_mode is not None:
        raise ValueError(f"classifier is already prepared for {classifier.finetune_mode!r}")
    encoder = classifier.encoder
    if mode == "full":
        for p in classifier.parameters():
            p.requires_grad = True
        classifier.finetune_mode = mode
        return classifier

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    with torch.random.fork_rng():  # importing peft draws random numbers; seeded inits must not see that
        from peft import LoraConfig, inject_adapter_in_model  # slow import (~4 s): only when needed

    target_names = _target_linear_names(encoder, targets)
    for p in encoder.parameters():
        p.requires_grad = False
    if mode == "qlora":
        for name in target_names:
            parent_name, _, child = name.rpartition(".")
            parent = encoder.get_submodule(parent_name)
            setattr(parent, child, quantize_linear_nf4(getattr(parent, child), nf4_blocksize, double_quant))
    # the ignore: peft annotates lora_alpha as int, but uses it only in alpha / r, so any real alpha works
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,  # type: ignore[arg-type]
                        target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, encoder)
    if fused:
        from fedhar.model.fused_lora import fuse_lora

        fuse_lora(encoder)
    for name, p in encoder.named_parameters():
        p.requires_grad = ".lora_" in name
    for p in classifier.head.parameters():
        p.requires_grad = True
    classifier.finetune_mode = mode
    return classifier


def _target_linear_names(encoder: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Full names of the encoder linears whose last name part is in ``targets``."""
    if not targets:
        raise ValueError("LoRA needs at least one target module name")
    found = [name for name, m in encoder.named_modules()
             if name.rpartition(".")[2] in targets and isinstance(m, nn.Linear)]
    missing = set(targets) - {name.rpartition(".")[2] for name in found}
    if missing:
        raise ValueError(f"no encoder linear named {sorted(missing)}; the encoder has q, k, v, o, w1, w2")
    return found


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the persistent buffers of the modules that own them: the
    model's own tensors (no copies), under ``trainable_state_dict``'s keys."""
    out: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not any(p.requires_grad for _, p in own):
            continue
        prefix = f"{module_name}." if module_name else ""
        for name, p in own:
            if p.requires_grad:
                out[prefix + name] = p
        for name, b in module.named_buffers(recurse=False):
            if b is not None and name not in module._non_persistent_buffers_set:
                out[prefix + name] = b
    return out


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the persistent buffers of the modules that own them (copies)."""
    return {k: v.detach().clone() for k, v in trainable_tensors(model).items()}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's trainable tensors; the key sets must match exactly."""
    targets = trainable_tensors(model)
    missing, unexpected = targets.keys() - state.keys(), state.keys() - targets.keys()
    if missing or unexpected:
        raise KeyError(f"trainable state mismatch: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]} ({len(missing)}/{len(unexpected)} in all)")
    with torch.no_grad():
        for name, value in state.items():
            if targets[name].shape != value.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} != model's {tuple(targets[name].shape)}")
            if value is not targets[name]:
                targets[name].copy_(value)


class ParameterCount(NamedTuple):
    trainable: int
    total: int


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total weights; a 4-bit weight counts as the weights it stands for."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(logical_numel(p) for p in model.parameters())
    return ParameterCount(trainable, total)


def frozen_weight_bytes(model: nn.Module) -> int:
    """Bytes of the frozen parameters as stored (float32, or NF4 codes plus quant state)."""
    return sum(stored_bytes(p) for p in model.parameters() if not p.requires_grad)


def trainable_bytes(model: nn.Module) -> int:
    """Bytes of ``trainable_state_dict(model)``: what a client sends per update."""
    return sum(t.numel() * t.element_size() for t in trainable_state_dict(model).values())
