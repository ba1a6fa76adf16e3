"""Record-level DP-SGD (Abadi et al., CCS 2016) for a client's local training, with torch.func.

One step: every training window joins the batch independently with probability
q = batch_size / windows (Poisson sampling, what the accountant assumes); the gradient of
each window's loss with respect to the trainable tensors is computed on its own
(``torch.func.vmap`` over ``grad``), scaled to L2 norm at most ``clip`` over all those tensors
together, and the clipped gradients are summed; Gaussian noise of std noise_multiplier x clip
is added and the sum divided by the expected batch size. The optimiser (AdamW, as without
DP) steps on that: post-processing. An epoch is windows / batch_size such steps.
fedhar.privacy.epsilon_spent(noise_multiplier, q, steps, delta) is then the epsilon of the
client's released tensors with respect to one of its windows.

What changes besides: BatchNorm runs in eval mode (its batch statistics mix the windows of
a batch, so a window's gradient would not be its own; the running statistics stay as
received and never see this client's data); dropout is drawn independently per window.
Sampling and noise come from the operating system's entropy, never from --seed: whoever
knows the noise or which windows were drawn could undo the guarantee.
QLoRA's 4-bit layers (bitsandbytes) do not run under vmap: LoRA and full fine-tuning only.
"""

from __future__ import annotations

import math
import secrets
import warnings

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

CHUNK = 32  # windows whose per-window gradients are held at once (memory: CHUNK x trainable parameters)


def steps_per_epoch(windows: int, batch_size: int) -> int:
    return max(1, round(windows / batch_size))


def sampling_rate(windows: int, batch_size: int) -> float:
    return min(1.0, batch_size / max(windows, 1))


def dp_sgd_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                 batch_size: int, clip: float, noise_multiplier: float) -> tuple[float, int]:
    """One epoch of DP-SGD on windows ``x`` and class indices ``y``: (mean loss over the
    windows drawn, steps taken)."""
    generator = torch.Generator().manual_seed(secrets.randbits(63))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

    def loss_of_one(weights, window, label):
        logits = functional_call(model, weights, (window.unsqueeze(0),))
        loss = nn.functional.cross_entropy(logits, label.unsqueeze(0))
        return loss, loss.detach()

    per_window = vmap(grad(loss_of_one, has_aux=True), in_dims=(None, 0, 0), randomness="different")
    q, steps = sampling_rate(len(x), batch_size), steps_per_epoch(len(x), batch_size)
    expected = q * len(x)
    total_loss, drawn = 0.0, 0
    warnings.filterwarnings("ignore", message=".*batching rule for aten::_scaled_dot_product.*")  # correct, slower
    for _ in range(steps):
        chosen = torch.nonzero(torch.rand(len(x), generator=generator) < q).flatten()
        summed = {n: torch.zeros_like(p) for n, p in params.items()}
        detached = {n: p.detach() for n, p in params.items()}
        for start in range(0, len(chosen), CHUNK):
            idx = chosen[start:start + CHUNK]
            grads, losses = per_window(detached, x[idx], y[idx])
            norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
            scale = (clip / (norms + 1e-12)).clamp(max=1.0)
            for n, g in grads.items():
                summed[n] += torch.einsum("i,i...->...", scale, g)
            total_loss += float(losses.sum())
        drawn += len(chosen)
        for n, p in params.items():
            noise = torch.normal(0.0, noise_multiplier * clip, size=p.shape, generator=generator)
            p.grad = (summed[n] + noise) / expected
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (total_loss / drawn if drawn else math.nan), steps
