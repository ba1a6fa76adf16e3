"""Cohort training: many clients' LoRA adapters and heads on one frozen backbone, in one pass.

The backbone is frozen and the same for every client, so a group ("cohort") of clients can
share its forward and backward pass: their minibatches are stacked (client after client,
no padding), every frozen projection runs once on the whole stack, and each client's own
LoRA term ``s * (x A_c^T) B_c^T`` and head run as batched matmuls (``torch.bmm`` /
``baddbmm``) over adapters stacked along a leading client dimension (the multi-LoRA batching
of Punica / S-LoRA / mLoRA, applied to training). The loss is the sum of the clients' own
mean cross-entropies, so each client's gradient is exactly its own; AdamW is elementwise, so
torch's own functional ``adamw`` on the stacked tensors is every client's own optimiser.

Clients with fewer steps: clients are sorted by their number of steps (longest first), so
the clients still training at step s are a prefix [0, k) of the stack; only their rows,
adapters and optimiser states take part (views, no copies), the others are left alone. No
data is invented: where the clients of a step hold different batch sizes (an epoch's last
batch), the per-client maths runs on a zero-padded (clients, rows, ...) view whose padded
rows are masked out of the loss and the BatchNorm statistics and dropped from the output.

What matches the one-client path (``Classifier`` with peft's LoRA layers, trained by
``finetune_epoch`` with ``torch.optim.AdamW``): the same maths in the same order per
layer; the head's dropout masks drawn per client, from that client's own generator, with
the very call ``F.dropout`` makes on the CPU (``bernoulli_(1 - p)`` then ``/ (1 - p)``).
Results equal the one-client path's within float32 rounding, not bit for bit (matmuls over
a different number of rows, BatchNorm statistics computed here): tests/test_cohort.py.

Scope: LoRA and QLoRA layers without LoRA dropout (the base of a QLoRA layer is its 4-bit
linear, called once on the stack); adapters may be frozen (FFA-LoRA's A). Clients in one
cohort share mode, rank and head size (the caller groups them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.adamw import adamw

from fedhar.model.adapters import trainable_tensors
from fedhar.model.head import Classifier
from fedhar.model.quantize import is_quantized

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.AdamW's defaults (what clients use)


class Layout:
    """Rows of a stacked batch: client i (of k) holds ``sizes[i]`` consecutive samples."""

    def __init__(self, sizes: list[int]):
        self.sizes = [int(s) for s in sizes]
        self.k, self.m, self.n = len(self.sizes), max(self.sizes), sum(self.sizes)
        self.equal = min(self.sizes) == self.m
        self.count = torch.tensor(self.sizes, dtype=torch.float32)
        self.mask = None if self.equal else torch.arange(self.m) < torch.tensor(self.sizes).unsqueeze(1)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(n, ...) -> (k, m, ...): a view when the sizes are equal, else zero-padded."""
        if self.equal:
            return x.reshape(self.k, self.m, *x.shape[1:])
        return nn.utils.rnn.pad_sequence(list(torch.split(x, self.sizes)), batch_first=True)

    def unpad(self, y: torch.Tensor) -> torch.Tensor:
        """(k, m, ...) -> (n, ...), the padded rows dropped."""
        if self.equal:
            return y.reshape(self.n, *y.shape[2:])
        return y[self.mask]


class _Pass:
    """What every stacked layer reads during one forward pass (set by ``Cohort.forward``)."""

    layout: Layout
    tensors: dict[str, torch.Tensor]  # key -> (k, ...) of the clients in this pass


class StackedLoRA(nn.Module):
    """A frozen base linear shared by the cohort; each client adds its own LoRA term.

    ``base(x) + (x A_c^T) B_c^T * scaling`` for client c's rows: peft's LoRA Linear maths
    (``result + lora_B(lora_A(x)) * scaling``), with A and B from the pass's stacked tensors."""

    def __init__(self, base: nn.Linear, scaling: float, key_a: str, key_b: str, current: _Pass):
        super().__init__()
        self.base, self.scaling, self.key_a, self.key_b = base, scaling, key_a, key_b
        self._current = current

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layout, tensors = self._current.layout, self._current.tensors
        a, b = tensors[self.key_a], tensors[self.key_b]
        if not torch.is_grad_enabled():  # evaluation: no autograd graph to keep, so fewer passes
            if layout.k == 1 and not is_quantized(self.base.weight):  # one client: W + s B A, one matmul
                return F.linear(x, torch.addmm(self.base.weight, b[0], a[0], alpha=self.scaling), self.base.bias)
            result = self.base(x)
            if not layout.equal:  # each client's rows in place, no copies
                return self._per_segment(x, result, a, b, layout)
            out = result.reshape(layout.k, -1, result.shape[-1])
            out.baddbmm_(torch.bmm(x.reshape(layout.k, -1, x.shape[-1]), a.transpose(1, 2)), b.transpose(1, 2),
                         alpha=self.scaling)
            return out.view(result.shape)
        result = self.base(x)
        per_client = layout.pad(x)  # (k, m, ..., in)
        k, m = per_client.shape[:2]
        flat = per_client.reshape(k, -1, x.shape[-1])
        h = torch.bmm(flat, a.transpose(1, 2))
        lora = torch.bmm(h, b.transpose(1, 2))
        lora = layout.unpad(lora.reshape(k, m, *x.shape[1:-1], -1))
        return result + lora * self.scaling

    def _per_segment(self, x, result, a, b, layout: Layout) -> torch.Tensor:
        flat, out = x.reshape(-1, x.shape[-1]), result.reshape(-1, result.shape[-1]).contiguous()
        per_sample = flat.shape[0] // layout.n
        start = 0
        for i, size in enumerate(layout.sizes):
            rows = slice(start * per_sample, (start + size) * per_sample)
            out[rows].addmm_(flat[rows] @ a[i].t(), b[i].t(), alpha=self.scaling)
            start += size
        return out.view(result.shape)


def _linear(module: nn.Module, what: str) -> nn.Linear:
    if not isinstance(module, nn.Linear):  # peft's LoRA Linear: a linear base (or NF4 Linear4bit) and linear A, B
        raise ValueError(f"cannot train this model in a cohort: {what} is a {type(module).__name__}, not an nn.Linear")
    return module


def _is_lora_layer(m: nn.Module) -> TypeGuard[LoraLayer]:
    """A peft LoRA layer holding the "default" adapter (duck-typed: importing peft is slow)."""
    return hasattr(m, "get_base_layer") and "default" in getattr(m, "lora_A", ())


def _lora_layers(encoder: nn.Module) -> list[tuple[str, LoraLayer]]:
    return [(name, m) for name, m in encoder.named_modules() if _is_lora_layer(m)]


def supports(model: Classifier) -> str:
    """Why a prepared classifier cannot train in a cohort ("" if it can)."""
    if model.finetune_mode not in ("lora", "qlora"):
        return f"mode {model.finetune_mode} (only LoRA and QLoRA adapters are stacked)"
    layers = _lora_layers(model.encoder)
    if not layers:
        return "no LoRA layers"
    for name, layer in layers:
        if not isinstance(layer.lora_dropout["default"], nn.Identity):
            return f"{name}: LoRA dropout > 0"
        if len(layer.active_adapters) != 1 or layer.merged or layer.disable_adapters:
            return f"{name}: not one active, unmerged adapter"
    lora = {f"encoder.{n}.lora_{p}.default.weight" for n, _ in layers for p in "AB"}
    other = [k for k in trainable_tensors(model) if k not in lora and not k.startswith("head.")]
    if other:
        return f"trainable tensors besides adapters and head: {other[:3]}"
    return ""


def _grad(param: torch.Tensor) -> torch.Tensor:
    if param.grad is None:  # every trainable tensor enters the loss, so backward() sets its gradient
        raise RuntimeError(f"a trainable cohort tensor {tuple(param.shape)} got no gradient")
    return param.grad


@dataclass
class StepResult:
    losses: list[float]  # per client in the step (the stack's prefix): its mean cross-entropy


class Cohort:
    """A frozen encoder whose LoRA layers take stacked per-client adapters, and a stacked head.

    Built from a prepared LoRA / QLoRA ``Classifier`` of the cohort's mode, rank and head
    size, which it takes over (its LoRA layers are replaced): give it a model of its own.
    ``keys``: the adapter and head tensors a client holds (trainable ones, frozen adapters
    such as FFA-LoRA's A, and the head's BatchNorm buffers); ``trainable``: those trained."""

    def __init__(self, model: Classifier):
        why = supports(model)
        if why:
            raise ValueError(f"cannot train this model in a cohort: {why}")
        own = trainable_tensors(model)
        self.trainable = [k for k, t in own.items() if isinstance(t, nn.Parameter) and t.requires_grad]
        self._current = _Pass()
        self.keys = list(own)
        self.frozen: dict[str, torch.Tensor] = {}  # frozen adapters (FFA-LoRA's A): the seeded build's, every client's
        for name, layer in _lora_layers(model.encoder):
            key_a, key_b = (f"encoder.{name}.lora_{p}.default.weight" for p in "AB")
            for key, linear in ((key_a, layer.lora_A["default"]), (key_b, layer.lora_B["default"])):
                if key not in own:
                    self.keys.append(key)
                    self.frozen[key] = _linear(linear, key).weight.detach().clone()
            parent, _, child = name.rpartition(".")
            base = _linear(layer.get_base_layer(), f"the base layer of {name}")
            stacked = StackedLoRA(base, float(layer.scaling["default"]), key_a, key_b, self._current)
            setattr(model.encoder.get_submodule(parent), child, stacked)
        self.encoder = model.encoder.eval()  # frozen; no dropout inside (MAE dropout 0, LoRA dropout 0)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        bn, dropout = model.head[1], model.head[3]  # ClassificationHead: Linear - BatchNorm1d - GELU - Dropout - Linear
        if not (isinstance(bn, nn.BatchNorm1d) and isinstance(dropout, nn.Dropout) and bn.momentum is not None):
            raise ValueError(f"cannot train this model in a cohort: its head is not Linear - BatchNorm1d (with a momentum) "
                             f"- GELU - Dropout - Linear: {model.head}")
        self.hidden, self.bn_eps, self.bn_momentum = bn.num_features, bn.eps, bn.momentum
        self.drop = float(dropout.p)

    def _value(self, state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        return state[key] if key in state else self.frozen[key]

    def forward(self, tensors: dict[str, torch.Tensor], x: torch.Tensor, layout: Layout,
                train: bool, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (k, m, classes) of windows x (n, C, L), client i's rows the i-th
        ``layout.sizes[i]``; ``tensors``: key -> (k, ...) stacked (views of the clients in the
        pass). train: BatchNorm on the batch (its running statistics updated in place),
        ``noise`` the head dropout's (k, m, hidden) factors."""
        self._current.layout, self._current.tensors = layout, tensors
        pooled = self.encoder(x).mean(dim=1)
        return self._head(tensors, layout.pad(pooled), layout, train, noise)

    def _head(self, t, h, layout: Layout, train: bool, noise):
        # Linear(dim, hidden) - BatchNorm1d - GELU - Dropout - Linear(hidden, classes), per client
        h = torch.baddbmm(t["head.0.bias"].unsqueeze(1), h, t["head.0.weight"].transpose(1, 2))
        rm, rv = t["head.1.running_mean"], t["head.1.running_var"]
        if train:
            if layout.equal:
                mean, var = h.mean(dim=1), h.var(dim=1, unbiased=False)
            else:
                assert layout.mask is not None, "a Layout of unequal sizes has a mask"
                w = layout.mask.unsqueeze(-1).to(h.dtype)
                count = layout.count.view(-1, 1)
                mean = (h * w).sum(dim=1) / count
                var = (((h - mean.unsqueeze(1)) * w) ** 2).sum(dim=1) / count
            with torch.no_grad():  # as F.batch_norm: momentum update, unbiased variance
                n = layout.count.view(-1, 1)
                rm.mul_(1 - self.bn_momentum).add_(mean.detach() * self.bn_momentum)
                rv.mul_(1 - self.bn_momentum).add_(var.detach() * (n / (n - 1)) * self.bn_momentum)
                t["head.1.num_batches_tracked"].add_(1)
        else:
            mean, var = rm, rv
        h = (h - mean.unsqueeze(1)) * torch.rsqrt(var + self.bn_eps).unsqueeze(1)
        h = h * t["head.1.weight"].unsqueeze(1) + t["head.1.bias"].unsqueeze(1)
        h = F.gelu(h)
        if train and noise is not None:
            h = h * noise
        return torch.baddbmm(t["head.4.bias"].unsqueeze(1), h, t["head.4.weight"].transpose(1, 2))

    def dropout_noise(self, sizes: list[int], generators: list[torch.Generator], m: int) -> torch.Tensor | None:
        """The head dropout's factors per client, (k, m, hidden): what ``F.dropout`` on the CPU
        multiplies by (``empty_like(h).bernoulli_(1 - p).div_(1 - p)``), drawn from each
        client's own generator; padded rows 0."""
        if self.drop == 0:
            return None
        out = torch.zeros(len(sizes), m, self.hidden)
        for i, (size, gen) in enumerate(zip(sizes, generators)):
            out[i, :size] = torch.empty(size, self.hidden).bernoulli_(1 - self.drop, generator=gen).div_(1 - self.drop)
        return out

    def train(self, states: list[dict[str, torch.Tensor]], schedules: list[list[tuple[torch.Tensor, torch.Tensor]]],
              generators: list[torch.Generator], lr: float, weight_decay: float) -> tuple[list[dict], list[list[float]]]:
        """Train every client on its own schedule (its minibatches, in order; a client with
        fewer steps stops earlier): states (key -> tensor, per client) in, trained states and
        each client's per-step losses out. ``generators``: each client's dropout stream."""
        order = sorted(range(len(states)), key=lambda i: -len(schedules[i]))  # still training = a prefix
        tensors = {k: torch.stack([self._value(states[i], k) for i in order]).contiguous() for k in self.keys}
        params = [tensors[k].requires_grad_() for k in self.trainable]
        exp_avg = [torch.zeros_like(p) for p in params]
        exp_avg_sq = [torch.zeros_like(p) for p in params]
        losses: list[list[float]] = [[] for _ in order]
        for s in range(len(schedules[order[0]]) if order else 0):
            k = sum(1 for i in order if len(schedules[i]) > s)
            batches = [schedules[i][s] for i in order[:k]]
            layout = Layout([len(y) for _, y in batches])
            x = torch.cat([b[0] for b in batches])
            y = layout.pad(torch.cat([b[1] for b in batches]))
            noise = self.dropout_noise(layout.sizes, [generators[i] for i in order[:k]], layout.m)
            view = {key: t[:k] for key, t in tensors.items()}
            logits = self.forward(view, x, layout, train=True, noise=noise)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view(k, layout.m)
            if not layout.equal:
                assert layout.mask is not None, "a Layout of unequal sizes has a mask"
                ce = ce * layout.mask
            per_client = ce.sum(dim=1) / layout.count
            for p in params:
                p.grad = None
            per_client.sum().backward()
            with torch.no_grad():
                steps = [torch.tensor(float(s)) for _ in params]
                adamw([p[:k] for p in params], [_grad(p)[:k] for p in params], [a[:k] for a in exp_avg],
                      [a[:k] for a in exp_avg_sq], [], steps, foreach=True, amsgrad=False, lr=lr,
                      weight_decay=weight_decay, maximize=False, beta1=BETA1, beta2=BETA2, eps=EPS)
            for j, value in enumerate(per_client.detach().tolist()):
                losses[j].append(value)
        out: list[dict] = [{}] * len(states)
        trained_losses: list[list[float]] = [[]] * len(states)
        for j, i in enumerate(order):
            out[i] = {k: t[j].detach().clone() for k, t in tensors.items() if k not in self.frozen}
            trained_losses[i] = losses[j]
        return out, trained_losses

    @torch.no_grad()
    def predict(self, states: list[dict[str, torch.Tensor]], windows: list[torch.Tensor],
                max_rows: int = 1024) -> list[torch.Tensor]:
        """Predicted class indices of every client's windows (eval mode), in chunks of about
        ``max_rows`` windows; a client's windows may span chunks."""
        tensors = {k: torch.stack([self._value(s, k) for s in states]) for k in self.keys}
        owner = torch.cat([torch.full((len(w),), i, dtype=torch.long) for i, w in enumerate(windows)])
        x = torch.cat(windows) if windows else torch.zeros(0)
        preds = []
        for start in range(0, len(owner), max_rows):
            who = owner[start:start + max_rows]
            clients, sizes = torch.unique_consecutive(who, return_counts=True)
            view = {k: t.index_select(0, clients) for k, t in tensors.items()}
            layout = Layout(sizes.tolist())
            logits = self.forward(view, x[start:start + max_rows], layout, train=False)
            preds.append(layout.unpad(logits.argmax(dim=-1)))
        flat = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
        return list(torch.split(flat, [len(w) for w in windows]))
