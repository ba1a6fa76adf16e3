"""Dense full-precision updates of frozen weights (FedEx-LoRA residuals, FLoRA merged products).

The server sends them as ``<layer>.base_delta`` (strategies/records.py); a client, the
server's evaluator and a saved model (fedhar.model.saved) all add them the same way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def add_base_deltas(model: torch.nn.Module, deltas: dict[str, np.ndarray]) -> None:
    """FedEx / FLoRA: add each layer's dense update as x @ delta.T beside the frozen weight.

    The update lives in its own float32 tensor: folded into 4-bit NF4 weights it would be
    rounded away (dequantise -> add -> requantise erases small updates)."""
    for layer, delta in deltas.items():
        module = model.get_submodule(layer)
        device = next(module.parameters()).device  # a client's model may live on a GPU
        weight = torch.from_numpy(np.asarray(delta, dtype=np.float32)).to(device)
        module.register_forward_hook(lambda m, inputs, out, w=weight: out + F.linear(inputs[0], w))
