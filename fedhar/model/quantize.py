"""NF4 quantisation of frozen linears with bitsandbytes, on the CPU.

``quantize_linear_nf4`` turns an ``nn.Linear`` into a frozen ``bitsandbytes.nn.Linear4bit``
(quant_type "nf4", compute dtype float32): the weight becomes a ``Params4bit`` whose
storage is uint8 holding two 4-bit codes per byte (numel / 2 bytes), plus a QuantState
with one absmax per ``blocksize`` weights; with double quantisation
(``compress_statistics``) those absmax values are themselves quantised to 8 bits with one
float32 absmax per 256 of them. The bias stays float32 and frozen.

bitsandbytes 0.50 quantises on the CPU when the parameter is first moved to a device
(``Params4bit.to`` calls ``_quantize``); we move it to "cpu".

CPU quirk handled: on CPUs with AVX512-BF16, bitsandbytes 0.50.2 repacks the weight into
a CPU-specific layout the first time a Linear4bit runs in eval mode without grad
(``_convert_weight_packed_for_cpu``). After that, training again fails inside
``matmul_4bit`` ("a view of a leaf Variable that requires grad is being used in an
in-place operation"), the eval outputs differ from the training path by about 1e-3, and
the double-quantised absmax is expanded back to float32. Federated clients alternate
evaluation and training, so we switch that fast path off (``support_avx512bf16_for_cpu =
False``): every forward uses the same float32 dequantise-and-matmul path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from bitsandbytes.functional import QuantState

NF4_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def quantize_linear_nf4(linear: nn.Linear, blocksize: int = 64, double_quant: bool = True) -> nn.Module:
    """A frozen NF4 ``Linear4bit`` copy of ``linear`` (float32 compute), quantised on the CPU."""
    with torch.random.fork_rng():  # keep the caller's seeded random stream untouched by the import
        from bitsandbytes.nn import Linear4bit, Params4bit  # slow import (~3 s): only when needed
    if blocksize not in NF4_BLOCKSIZES:
        raise ValueError(f"nf4 blocksize must be one of {NF4_BLOCKSIZES}, got {blocksize}")
    q = Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None,
        compute_dtype=torch.float32, compress_statistics=double_quant, quant_type="nf4",
    )
    weight = Params4bit(
        linear.weight.detach().to("cpu", torch.float32).clone(), requires_grad=False,
        blocksize=blocksize, compress_statistics=double_quant, quant_type="nf4", module=q,
    )
    # Params4bit quantises on its first move to a device. The ignore: bitsandbytes annotates
    # Params4bit.to with a self type bound to nn.Module, though Params4bit is a tensor
    q.weight = weight.to("cpu")  # type: ignore[misc]
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.detach().to("cpu", torch.float32).clone(), requires_grad=False)
    q.support_avx512bf16_for_cpu = False  # see module docstring
    return q


def is_quantized(param: torch.Tensor) -> bool:
    """True for a quantised bitsandbytes Params4bit (duck-typed: no bitsandbytes import)."""
    return bool(getattr(param, "bnb_quantized", False)) and getattr(param, "quant_state", None) is not None


def quant_state(param: torch.Tensor) -> QuantState:
    """The bitsandbytes QuantState of a parameter that ``is_quantized`` accepts."""
    state = getattr(param, "quant_state", None)
    if state is None or not is_quantized(param):
        raise ValueError(f"not a quantised bitsandbytes parameter: {type(param).__name__} {tuple(param.shape)}")
    return state


def logical_numel(param: torch.Tensor) -> int:
    """Number of weights a parameter stands for (a packed 4-bit tensor holds two per byte)."""
    if is_quantized(param):
        return int(torch.Size(quant_state(param).shape).numel())
    return param.numel()


def stored_bytes(param: torch.Tensor) -> int:
    """Bytes a parameter really occupies: packed codes plus its quantisation state.

    For NF4 that is the uint8 codes, the absmax per block (uint8 with double quantisation,
    else float32), the 16-entry NF4 code table and, when nested, the float32 offset, the
    second-level absmax and its 256-entry code table.
    """
    n = param.numel() * param.element_size()
    if is_quantized(param):
        qs = quant_state(param)
        parts = [qs.absmax, qs.code]
        if qs.nested:
            parts += [qs.offset, qs.state2.absmax, qs.state2.code]
        n += sum(t.numel() * t.element_size() for t in parts)
    return n
