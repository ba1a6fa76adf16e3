"""Fused LoRA: peft's LoRA layers computing the same maths in fewer passes (opt-in).

peft evaluates an adapted linear as ``base(x) + lora_B(lora_A(dropout(x))) * scaling``:
besides the base matmul, a rank-r matmul writing an output-wide tensor, a multiply and an
add over that tensor, and their mirror images in backward. With fedhar's small layers
(512 rows x 192..576) these output-wide passes cost about as much as LoRA saves
(results/bench/README.md). ``fuse_lora`` makes every such layer compute

    out = addmm(b, x, W^T);  out += s * (x A^T) B^T     (one in-place addmm)

with a hand-written backward (``_LoRAFunction``: the input gradient g W + s (g B) A as one
addmm, the adapter gradients from the saved x A^T). For a bitsandbytes NF4 base
(QLoRA) the weight is dequantised once per forward and that float32 copy is kept for the
backward, instead of bitsandbytes dequantising again there; the stored weight stays 4-bit.
LoRA dropout (peft: on the adapter's input) draws its mask with ``keep_mask``, cheaper
than torch's dropout but a different random stream: runs with dropout > 0 differ from
peft's in which inputs are dropped, not in the distribution.

The modules, parameters and state-dict keys stay peft's (the class is swapped for a
subclass), so checkpoints, ``trainable_state_dict`` and federated exchange are unchanged.
Outputs and gradients equal peft's within float32 rounding, not bit for bit
(tests/test_fused_lora.py), hence opt-in: ``prepare_for_finetune(..., fused=True)``,
``FLConfig.fused_lora``, ``FinetuneConfig.fused_lora``. A layer falls back to peft's own
forward whenever the shortcut does not apply: adapters disabled or merged, several active
adapters, a DoRA / other variant, a dropout other than nn.Dropout, a base other than an
nn.Linear, a trainable base weight or bias, extra forward arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fedhar.model.quantize import is_quantized, quant_state

if TYPE_CHECKING:  # the mixin's host class (see _fused_class), for the type checker only
    from peft.tuners.lora import Linear as _LoraHost
else:
    _LoraHost = object  # at run time the host comes second in the MRO, after the mixin


class _LoRAFunction(torch.autograd.Function):
    """out = x W^T + b + s (xa A^T) B^T for 2-D x, W and b frozen; xa is x, or x with
    dropout applied (peft drops the adapter's input only)."""

    @staticmethod
    def forward(ctx, x, xa, weight, bias, lora_a, lora_b, scaling: float):
        h = xa @ lora_a.t()
        out = torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()
        out.addmm_(h, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(xa, h, weight, lora_a, lora_b)
        ctx.scaling, ctx.same = scaling, xa is x
        return out

    @staticmethod
    def backward(ctx, grad):
        xa, h, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        gh = (grad @ lora_b).mul_(s)  # (rows, r): small
        grad_a = gh.t() @ xa if ctx.needs_input_grad[4] else None
        grad_b = (grad.t() @ h).mul_(s) if ctx.needs_input_grad[5] else None
        if ctx.same:  # one input: its gradient g W + gh A as one addmm
            grad_x = torch.addmm(gh @ lora_a, grad, weight) if ctx.needs_input_grad[0] else None
            return grad_x, None, None, None, grad_a, grad_b, None
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_xa = gh @ lora_a if ctx.needs_input_grad[1] else None
        return grad_x, grad_xa, None, None, grad_a, grad_b, None


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Bernoulli(1 - p) keep mask, drawn as 16 random bits per element from 64-bit integers:
    about 4x fewer generator calls than ``torch.bernoulli`` / ``F.dropout``, whose per-element
    draws dominated a LoRA step with dropout on the CPU (p is rounded to a multiple of 2^-16)."""
    n = shape.numel()
    words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    return words.view(torch.int16)[:n].view(shape) >= -32768 + round(p * 65536)


class _Fused(_LoraHost):
    """Mixin placed before peft's LoRA layer class: the fused forward, else peft's."""

    def _base_linear(self) -> nn.Linear:
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):  # _fused_class takes peft's Linear, over an nn.Linear or NF4 Linear4bit
            raise TypeError(f"fused LoRA needs an nn.Linear base layer, got {type(base).__name__}")
        return base

    def _dense_weight(self) -> torch.Tensor:
        w = self._base_linear().weight
        if not is_quantized(w):
            return w
        import bitsandbytes.functional as bnbf  # a bitsandbytes NF4 base (QLoRA): dequantise once

        return bnbf.dequantize_4bit(w.data, quant_state(w)).to(torch.float32)

    def _fusable(self, args, kwargs) -> str | None:
        """The one active adapter if the fused path computes what peft would, else None."""
        if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant:
            return None
        if not isinstance(self.lora_dropout[name], (nn.Identity, nn.Dropout)):
            return None
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):  # e.g. a transformers Conv1D, whose weight is transposed
            return None
        if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return None
        return name

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._fusable(args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        flat = x.reshape(-1, x.shape[-1])
        drop = self.lora_dropout[name]
        p = drop.p if self.training and isinstance(drop, nn.Dropout) else 0.0
        scaling = float(self.scaling[name])
        dropped = flat
        if p > 0:  # the 1 / (1 - p) of inverted dropout goes into the scaling: one pass less
            dropped, scaling = flat.masked_fill(~keep_mask(flat.shape, p), 0.0), scaling / (1 - p)
        out = _LoRAFunction.apply(flat, dropped, self._dense_weight(), self._base_linear().bias,
                                  self.lora_A[name].weight, self.lora_B[name].weight, scaling)
        return out.reshape(*x.shape[:-1], out.shape[-1])


_fused_classes: dict[type, type] = {}


def _fused_class(cls: type) -> type | None:
    """The fused subclass of a peft LoRA layer class (made once), or None if not fusable."""
    from peft.tuners.lora import Linear

    if cls in _fused_classes.values():
        return cls
    if cls not in _fused_classes:
        # peft wraps fedhar's NF4 linears in its plain Linear too (its bitsandbytes classes
        # are for CUDA); _dense_weight tells the two bases apart
        if cls is not Linear:
            return None
        _fused_classes[cls] = type(f"Fused{cls.__name__}", (_Fused, cls), {"__module__": __name__})
        globals()[_fused_classes[cls].__name__] = _fused_classes[cls]  # picklable by name
    return _fused_classes[cls]


def fuse_lora(model: nn.Module) -> int:
    """Switch every peft LoRA Linear / Linear4bit in ``model`` to the fused forward, in place;
    returns how many layers were switched."""
    count = 0
    for module in model.modules():
        fused = _fused_class(type(module))
        if fused is not None and type(module) is not fused:
            module.__class__ = fused
            count += 1
    return count
