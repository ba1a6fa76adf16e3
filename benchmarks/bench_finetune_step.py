"""Fine-tuning step benchmark (issue 3): full, LoRA and QLoRA, fedhar against a bare loop.

What it measures, in one process, on one fixed seeded batch (windows (B, 6, 128), labels
of 12 classes):

* ms per training step (zero_grad, forward, cross-entropy, backward, AdamW step) for
  full fine-tuning, LoRA r = 8, 16, 32 and QLoRA (NF4) r = 8, 32;
* three paths for every mode:
    bare         a self-contained PyTorch model of the same shape defined in this file
                 (no fedhar import), adapted with plain peft ``inject_adapter_in_model``
                 and bitsandbytes ``Linear4bit``, trained by a plain loop on the batch;
    fedhar       ``fedhar.model``: ``Classifier`` + ``prepare_for_finetune`` trained by
                 ``finetune_epoch`` over ``make_loader`` (what a federated client runs,
                 see simulations/task.py ``train_local``), the loader yielding the batch;
    fedhar-step  the same ``finetune_epoch`` over a list of ready batches, so the
                 difference to ``fedhar`` is the DataLoader's cost alone;
* bare diagnostics (``--no-diagnostics`` leaves them out): the model with 48
  channel-independent tokens (full, LoRA r = 8, 32, QLoRA r = 8), 6x the rows per matmul,
  to see whether LoRA's costs are fixed per operation; and ``lora-addmm`` r = 8, 32, the
  same LoRA computed by ``AddmmLoRALinear`` below (no peft) with its B product, scaling
  and sum fused into one addmm, to measure what peft's separate operations cost.
* peak memory growth during steps (Linux peak RSS, VmHWM after resetting it through
  /proc/self/clear_refs; a psutil sampling thread where that is not possible; on CUDA
  ``torch.cuda.max_memory_allocated``), bytes saved for backward by one forward
  (activations, parameters excluded), trainable parameters and their bytes, AdamW state
  bytes, and frozen-weight bytes as stored (fedhar's ``frozen_weight_bytes``; the bare
  model counts its own the same way: float32 bytes, or NF4 codes plus quantisation state).

How: every variant is built first; then ``--rounds`` rounds each run every variant for
``--warmup`` untimed and ``--steps`` timed steps, the order rotated every round, so that
drifts in machine load fall on all variants alike. Step times are pooled over the rounds
(median and interquartile range); each ratio is the ratio of pooled medians, and its
range is the min..max of the same ratio taken round by round. fedhar's per-step times
come from a wrapper around the loader that stamps the clock each time ``finetune_epoch``
asks for the next batch, so they include the loader's work, as a client's step does.

Run from the repository root:
    python benchmarks/bench_finetune_step.py                 # writes results/bench/
    python benchmarks/bench_finetune_step.py --quick         # a fast look, writes nothing
    python benchmarks/bench_finetune_step.py --device cuda   # CUDA path (skips without one)
    python benchmarks/bench_finetune_step.py --profile "fedhar lora r8" "bare full"
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without `pip install -e`
    sys.path.insert(0, str(ROOT))

# The model shape fedhar uses (fedhar.model.MAEConfig defaults) and its client optimiser.
CHANNELS, WINDOW, PATCH = 6, 128, 16
DIM, DEPTH, HEADS, FFN = 192, 6, 6, 576
HEAD_HIDDEN, HEAD_DROPOUT, N_CLASSES = 128, 0.2, 12
LR, WEIGHT_DECAY, LORA_ALPHA = 2e-3, 0.01, 16
TARGETS = ["q", "k", "v", "o", "w1", "w2"]
NF4_BLOCKSIZE = 64
DEFAULT_THREADS = 2

MODES = [("full", 0), ("lora", 8), ("lora", 16), ("lora", 32), ("qlora", 8), ("qlora", 32)]
PATHS = ["bare", "fedhar", "fedhar-step"]
FUSED_PATH = "fedhar-fused"  # fedhar's loop with fused_lora (fedhar.model.fused_lora), LoRA and QLoRA only
CHANNEL_TOKEN_MODES = [("full", 0), ("lora", 8), ("lora", 32), ("qlora", 8)]  # bare only
ADDMM_LORA_RANKS = [8, 32]  # bare only: AddmmLoRALinear, the fused LoRA diagnostic
FEDHAR_VS_BARE_MAX = 1.10  # issue 3 targets
QLORA_VS_LORA_MAX = 1.15
LORA_VS_FULL_MAX = {8: 0.90, 32: 1.00}
FUSED_LORA_VS_FULL_MAX = {8: 0.85}  # issue 12 targets, for the fused path
FUSED_QLORA_VS_LORA_MAX = 1.10


# --------------------------------------------------------------------------------------
# The bare reference: plain PyTorch + peft + bitsandbytes, no fedhar code.
# --------------------------------------------------------------------------------------

class BareAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x):
        n, t, d = x.shape

        def heads(z):
            return z.reshape(n, t, HEADS, d // HEADS).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))
        return self.o(out.transpose(1, 2).reshape(n, t, d))


class BareFeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.w2 = nn.Linear(DIM, FFN), nn.Linear(FFN, DIM)

    def forward(self, x):
        return self.w2(F.gelu(self.w1(x)))


class BareBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(DIM), BareAttention()
        self.norm2, self.ffn = nn.LayerNorm(DIM), BareFeedForward()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def sincos(n_positions: int, dim: int) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.outer(torch.arange(n_positions, dtype=torch.float64), omega)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class BareEncoder(nn.Module):
    """Patch embedding + fixed sin-cos positions + 6 pre-LN blocks + LayerNorm.

    tokens=8: one token per 16-sample time patch holding all 6 channels (96 values);
    tokens=48: one token per channel and time patch (16 values), channel-independent.
    """

    def __init__(self, tokens: int = 8):
        super().__init__()
        patches = WINDOW // PATCH
        if tokens not in (patches, patches * CHANNELS):
            raise ValueError(f"tokens must be {patches} or {patches * CHANNELS}, got {tokens}")
        self.channel_tokens = tokens != patches
        self.patch_embed = nn.Linear(PATCH if self.channel_tokens else CHANNELS * PATCH, DIM)
        self.register_buffer("pos", sincos(tokens, DIM), persistent=False)
        self.blocks = nn.ModuleList(BareBlock() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x):
        n = x.shape[0]
        p = x.reshape(n, CHANNELS, WINDOW // PATCH, PATCH)
        if self.channel_tokens:
            p = p.reshape(n, CHANNELS * (WINDOW // PATCH), PATCH)
        else:
            p = p.permute(0, 2, 1, 3).reshape(n, WINDOW // PATCH, CHANNELS * PATCH)
        z = self.patch_embed(p) + self.pos
        for block in self.blocks:
            z = block(z)
        return self.norm(z)


class BareClassifier(nn.Module):
    def __init__(self, tokens: int = 8):
        super().__init__()
        self.encoder = BareEncoder(tokens)
        self.head = nn.Sequential(
            nn.Linear(DIM, HEAD_HIDDEN), nn.BatchNorm1d(HEAD_HIDDEN), nn.GELU(),
            nn.Dropout(HEAD_DROPOUT), nn.Linear(HEAD_HIDDEN, N_CLASSES),
        )

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


def bare_nf4(linear: nn.Linear, device: torch.device) -> nn.Module:
    """The usual bitsandbytes recipe: a Linear4bit whose Params4bit quantises on .to(device)."""
    from bitsandbytes.nn import Linear4bit, Params4bit
    q = Linear4bit(linear.in_features, linear.out_features, bias=True, compute_dtype=torch.float32,
                   compress_statistics=True, quant_type="nf4")
    q.weight = Params4bit(linear.weight.data.clone(), requires_grad=False, blocksize=NF4_BLOCKSIZE,
                          compress_statistics=True, quant_type="nf4")
    q.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    q = q.to(device)
    assert q.weight.bnb_quantized, "bitsandbytes did not quantise the weight"
    return q


class AddmmLoRALinear(nn.Module):
    """Diagnostic, not peft: LoRA whose B product, scaling and sum are one in-place addmm.

    Computes what peft's LoRA Linear computes, x W^T + b + s (x A^T) B^T with s = alpha / r,
    A Kaiming-uniform and B = 0 at start, but peft evaluates it as separate operations
    (B-matmul, multiply by s, add), each writing a tensor as wide as the output.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        out = torch.addmm(self.base.bias, flat, self.base.weight.t())
        # In place is safe: addmm's backward needs its inputs, not its output.
        out.addmm_(flat @ self.lora_A.t(), self.lora_B.t(), alpha=self.scaling)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _target_parents(model: BareClassifier):
    for block in model.encoder.blocks:
        for parent, names in ((block.attn, ("q", "k", "v", "o")), (block.ffn, ("w1", "w2"))):
            for name in names:
                yield parent, name


def bare_model(mode: str, rank: int, tokens: int, device: torch.device) -> nn.Module:
    model = BareClassifier(tokens)
    if mode == "full":
        return model.to(device)
    model.encoder.requires_grad_(False)
    if mode == "lora-addmm":
        for parent, name in _target_parents(model):
            setattr(parent, name, AddmmLoRALinear(getattr(parent, name), rank, LORA_ALPHA))
        return model.to(device)
    from peft import LoraConfig, inject_adapter_in_model
    if mode == "qlora":
        for parent, name in _target_parents(model):
            setattr(parent, name, bare_nf4(getattr(parent, name), device))
    config = LoraConfig(r=rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none")
    inject_adapter_in_model(config, model.encoder)  # leaves only the lora_ tensors trainable
    return model.to(device)


def bare_frozen_bytes(model: nn.Module) -> int:
    """Frozen weights as stored: float32 bytes, or NF4 codes + absmax + code tables."""
    total = 0
    for p in model.parameters():
        if p.requires_grad:
            continue
        total += p.numel() * p.element_size()
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            parts = [qs.absmax, qs.code] + ([qs.offset, qs.state2.absmax, qs.state2.code] if qs.nested else [])
            total += sum(t.numel() * t.element_size() for t in parts)
    return total


# --------------------------------------------------------------------------------------
# Variants and their step loops.
# --------------------------------------------------------------------------------------

def cuda_sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Wraps a batch iterable; stamps the clock each time the consumer asks for a batch.

    Consecutive stamps bracket one step of the consumer's loop, fetching included.
    """

    def __init__(self, batches, device: torch.device):
        self.batches, self.device, self.stamps = batches, device, []

    def __iter__(self):
        self.stamps = []
        it = iter(self.batches)
        while True:
            cuda_sync(self.device)
            self.stamps.append(time.perf_counter())
            try:
                item = next(it)
            except StopIteration:
                return
            yield item

    def durations(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


@dataclass
class Variant:
    path: str  # bare, fedhar or fedhar-step
    mode: str
    rank: int
    tokens: int = 8
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    times: list[list[float]] = field(default_factory=list)  # seconds, one list per round
    info: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        name = f"{self.path} {self.mode}" + (f" r{self.rank}" if self.mode != "full" else "")
        return name + (f" {self.tokens}tok" if self.tokens != 8 else "")

    def build(self, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        if self.path == "bare":
            self.model = bare_model(self.mode, self.rank, self.tokens, device)
        else:
            from fedhar.model import ClassificationHead, Classifier, Encoder, MAEConfig, prepare_for_finetune
            encoder = Encoder(MAEConfig())
            model = Classifier(encoder, ClassificationHead(encoder.config.dim, N_CLASSES))
            self.model = prepare_for_finetune(model, self.mode, rank=self.rank or 8, alpha=LORA_ALPHA,
                                              fused=self.path == FUSED_PATH).to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # As simulations/task.py train_local builds it.
        self.optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)

    def feed(self, x: torch.Tensor, y: torch.Tensor, n: int):
        """What ``run`` consumes for n steps (built outside the timed and measured region)."""
        if self.path in ("fedhar", FUSED_PATH):
            from fedhar.model import make_loader
            # n copies of the batch in order: every loader batch is the fixed batch.
            return make_loader(x.cpu().repeat(n, 1, 1), y.cpu().repeat(n), batch_size=len(x), shuffle=False)
        return [(x, y)] * n

    def run(self, feed, device: torch.device) -> list[float]:
        """Train one step per batch of ``feed``; seconds per step."""
        if self.path == "bare":
            return bare_steps(self.model, self.optimizer, feed, device)
        from fedhar.model import finetune_epoch
        clock = StepClock(feed, device)
        finetune_epoch(self.model, clock, self.optimizer)
        return clock.durations()


def bare_steps(model, optimizer, feed, device) -> list[float]:
    criterion = nn.CrossEntropyLoss()
    model.train()
    times = []
    for x, y in feed:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        cuda_sync(device)
        times.append(time.perf_counter() - start)
    return times


def make_variants(modes=MODES, paths=PATHS, diagnostics: bool = True) -> list[Variant]:
    variants = [Variant(path, mode, rank) for mode, rank in modes for path in paths
                if path != FUSED_PATH or mode != "full"]
    if diagnostics:
        # 48 tokens: 6x the rows per matmul, to see whether fixed per-operation costs fade.
        variants += [Variant("bare", mode, rank, tokens=(WINDOW // PATCH) * CHANNELS)
                     for mode, rank in CHANNEL_TOKEN_MODES]
        variants += [Variant("bare", "lora-addmm", rank) for rank in ADDMM_LORA_RANKS]
    return variants


def fixed_batch(batch: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CHANNELS, WINDOW, generator=g)
    y = torch.randint(0, N_CLASSES, (batch,), generator=g)
    return x.to(device), y.to(device)


# --------------------------------------------------------------------------------------
# Memory.
# --------------------------------------------------------------------------------------

def _rss_kib(field_name: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field_name}:\s+(\d+) kB", status, re.M).group(1))


def _reset_peak_rss() -> bool:
    try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _malloc_trim():
    try:  # hand freed heap back to the OS so that RSS growth reflects this variant's steps
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssSampler(threading.Thread):
    """Fallback peak-RSS measurement: samples psutil's RSS every millisecond."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil
        self.process, self.peak, self.done = psutil.Process(), 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def measure_memory(variant: Variant, x, y, device, steps: int = 3) -> dict:
    """Peak RSS growth over ``steps`` steps (what the OS sees), and on CUDA the allocator peak."""
    feed = variant.feed(x, y, steps)
    gc.collect()
    _malloc_trim()
    out = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    rss0 = _rss_kib("VmRSS") * 1024
    if _reset_peak_rss():
        variant.run(feed, device)
        peak, how = _rss_kib("VmHWM") * 1024, "VmHWM"
    else:
        sampler = RssSampler()
        sampler.start()
        variant.run(feed, device)
        peak, how = sampler.stop(), "psutil"
    out["peak_rss_growth_mib"] = (peak - rss0) / 2**20
    out["rss_method"] = how
    if device.type == "cuda":
        out["tensor_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["cuda_peak_growth_mib"] = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20
        out["tensor_peak_method"] = "torch.cuda.max_memory_allocated"
    return out


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop lines (written to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_tensor_peak_mib(variant: Variant, x, y, device, steps: int = 2) -> dict:
    """Peak bytes of live tensors (parameters, AdamW state, gradients, activations) over
    ``steps`` steps, from the profiler's memory timeline: exact, unlike RSS, which also holds
    the allocator's free lists and oneDNN's buffers. On the CPU only (CUDA has its counter)."""
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    feed = variant.feed(x, y, steps)
    with _quiet_stderr(), torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                        record_shapes=True, with_stack=True) as prof:
        variant.run(feed, device)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # export_memory_timeline: deprecated, still works
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return {"tensor_peak_mib": max(map(sum, sizes)) / 2**20 if sizes else float("nan"),
            "tensor_peak_method": "profiler memory timeline"}


def saved_for_backward_bytes(model: nn.Module, x, y) -> int:
    """Bytes of the distinct storages one forward saves for backward, parameters excluded."""
    owned = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(x), y)
    del loss
    return sum(saved.values())


def matmul_gflop(variant: Variant, x, y) -> float | str:
    """FLOPs of the matmuls one forward + backward runs (torch's FlopCounterMode; the
    optimiser step and elementwise work not counted). bitsandbytes' 4-bit matmuls are
    custom operators the counter cannot see, so QLoRA gets no count."""
    if variant.mode == "qlora":
        return ""
    from torch.utils.flop_counter import FlopCounterMode
    variant.model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        nn.functional.cross_entropy(variant.model(x), y).backward()
    variant.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def static_info(variant: Variant, x, y) -> dict:
    model = variant.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    if variant.path == "bare":
        frozen = bare_frozen_bytes(model)
    else:
        from fedhar.model import frozen_weight_bytes
        frozen = frozen_weight_bytes(model)
    state = sum(t.numel() * t.element_size() for s in variant.optimizer.state.values()
                for t in s.values() if torch.is_tensor(t))
    return {
        "trainable_params": sum(p.numel() for p in trainable),
        "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_state_bytes": state,
        "frozen_weight_bytes": frozen,
        "saved_for_backward_mib": saved_for_backward_bytes(model, x, y) / 2**20,
        "matmul_gflop": matmul_gflop(variant, x, y),
    }


# --------------------------------------------------------------------------------------
# The measurement and its statistics.
# --------------------------------------------------------------------------------------

def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measure(variants: list[Variant], batch: int = 64, warmup: int = 5, steps: int = 30, rounds: int = 3,
            device: str | torch.device = "cpu", memory_steps: int = 3, tensor_peak: bool = True,
            log=print) -> list[dict]:
    """Build, time (interleaved rounds) and size every variant; one result row each."""
    device = torch.device(device)
    x, y = fixed_batch(batch, device)
    for v in variants:
        v.build(device)
        v.run(v.feed(x, y, 1), device)  # first step: lazy AdamW state, bnb/peft first calls
    for r in range(rounds):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            feed = v.feed(x, y, warmup + steps)
            v.times.append(v.run(feed, device)[warmup:])
        log(f"round {r + 1}/{rounds} done ({time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.2f})")
    for v in variants:
        v.info = static_info(v, x, y) | measure_memory(v, x, y, device, memory_steps)
        if device.type == "cpu" and tensor_peak:
            v.info |= cpu_tensor_peak_mib(v, x, y, device)
    return [result_row(v) for v in variants] if variants else []


def result_row(v: Variant) -> dict:
    pooled = [t * 1e3 for round_times in v.times for t in round_times]
    row = {
        "variant": v.label, "path": v.path, "mode": v.mode, "rank": v.rank or "", "tokens": v.tokens,
        "ms_median": statistics.median(pooled), "ms_q25": quantile(pooled, 0.25),
        "ms_q75": quantile(pooled, 0.75), "steps_timed": len(pooled),
        "round_medians_ms": ";".join(f"{statistics.median(t) * 1e3:.2f}" for t in v.times),
    }
    row.update(v.info)
    return row


@dataclass
class Check:
    name: str
    numerator: str
    denominator: str
    target: float | None  # maximum ratio; None: reported, no target
    note: str = ""


def checks_for(rows: list[dict]) -> list[Check]:
    have = {r["variant"] for r in rows}
    out = []
    for mode, rank in MODES:
        m = f"{mode}" + (f" r{rank}" if rank else "")
        for path in ("fedhar", "fedhar-step"):
            out.append(Check(f"{path}/bare, {m}", f"{path} {m}", f"bare {m}",
                             FEDHAR_VS_BARE_MAX if path == "fedhar" else None,
                             "" if path == "fedhar" else "the loop without the DataLoader"))
    for path in ("fedhar", "bare"):
        for mode, rank in MODES:
            if mode == "lora":
                out.append(Check(f"lora r{rank} / full ({path})", f"{path} lora r{rank}", f"{path} full",
                                 LORA_VS_FULL_MAX.get(rank),
                                 {8: "issue: linears ~0.83x full's FLOPs", 32: "issue: equal FLOPs"}.get(rank, "")))
        for mode, rank in MODES:
            if mode == "qlora":
                out.append(Check(f"qlora r{rank} / lora r{rank} ({path})", f"{path} qlora r{rank}",
                                 f"{path} lora r{rank}", QLORA_VS_LORA_MAX))
    out.append(Check("48 / 8 tokens, full (bare)", "bare full 48tok", "bare full", None, "issue: about 5x"))
    for mode, rank in CHANNEL_TOKEN_MODES[1:]:
        ref = "full" if mode == "lora" else f"lora r{rank}"
        out.append(Check(f"48 tokens: {mode} r{rank} / {ref} (bare)", f"bare {mode} r{rank} 48tok",
                         f"bare {ref} 48tok", None, "diagnostic: same ratio with 6x the rows"))
    fused = FUSED_PATH
    for mode, rank in MODES:
        m = f"{mode} r{rank}"
        if mode == "lora":
            out.append(Check(f"fused lora r{rank} / full (fedhar)", f"{fused} {m}", "fedhar full",
                             FUSED_LORA_VS_FULL_MAX.get(rank), "issue 12"))
        if mode == "qlora":
            out.append(Check(f"fused qlora r{rank} / fused lora r{rank}", f"{fused} {m}", f"{fused} lora r{rank}",
                             FUSED_QLORA_VS_LORA_MAX if rank == 8 else None, "issue 12"))
        if mode != "full":
            out.append(Check(f"fused / peft, {m} (fedhar)", f"{fused} {m}", f"fedhar {m}", None, ""))
    for rank in ADDMM_LORA_RANKS:
        out.append(Check(f"fused LoRA r{rank} / full (bare)", f"bare lora-addmm r{rank}", "bare full", None,
                         f"diagnostic: LoRA as one addmm (target for peft LoRA: <= {LORA_VS_FULL_MAX.get(rank)})"))
    return [c for c in out if c.numerator in have and c.denominator in have]


def check_rows(rows: list[dict]) -> list[dict]:
    by = {r["variant"]: r for r in rows}
    out = []
    for c in checks_for(rows):
        num, den = by[c.numerator], by[c.denominator]
        per_round = [float(a) / float(b) for a, b in zip(num["round_medians_ms"].split(";"),
                                                          den["round_medians_ms"].split(";"))]
        ratio = num["ms_median"] / den["ms_median"]
        note = c.note
        if num.get("matmul_gflop") not in (None, "") and den.get("matmul_gflop") not in (None, "") \
                and num["mode"] != den["mode"]:
            note = f"matmul FLOPs {num['matmul_gflop'] / den['matmul_gflop']:.2f}x" + (f"; {note}" if note else "")
        out.append({
            "check": c.name, "ratio": ratio, "round_min": min(per_round), "round_max": max(per_round),
            "target_max": c.target if c.target is not None else "",
            "result": "" if c.target is None else ("PASS" if ratio <= c.target else "MISS"),
            "note": note,
        })
    return out


# --------------------------------------------------------------------------------------
# Machine information and output files.
# --------------------------------------------------------------------------------------

def machine_info(device: torch.device, argv: list[str]) -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    versions = {}
    for name in ("peft", "bitsandbytes"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    info = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git commit": commit,
        "command": " ".join(["python"] + [a if re.fullmatch(r"[\w./=-]+", a) else repr(a) for a in argv]),
        "cpu": (model.group(1).strip() if model else platform.processor()) or "unknown",
        "cpu flags": " ".join(f for f in wanted if flags and f in flags.group(1).split()) or "none of " + ",".join(wanted),
        "cores (os / usable)": f"{os.cpu_count()} / {len(os.sched_getaffinity(0))}",
        "torch threads (intra / inter-op)": f"{torch.get_num_threads()} / {torch.get_num_interop_threads()}",
        "threading environment": " ".join(f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ) or "none set",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "peft": versions["peft"],
        "bitsandbytes": versions["bitsandbytes"],
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
    }
    return info


THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "MALLOC_ARENA_MAX")
CSV_FIELDS = ["variant", "path", "mode", "rank", "tokens", "ms_median", "ms_q25", "ms_q75", "steps_timed",
              "round_medians_ms", "trainable_params", "trainable_bytes", "optimizer_state_bytes",
              "frozen_weight_bytes", "matmul_gflop", "saved_for_backward_mib", "tensor_peak_mib", "tensor_peak_method",
              "peak_rss_growth_mib", "rss_method", "cuda_peak_growth_mib"]
CHECK_FIELDS = ["check", "ratio", "round_min", "round_max", "target_max", "result", "note"]


def write_csv(path: Path, fields: list[str], rows: list[dict]):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k, "")) for k in fields})


def _csv_value(v):
    return f"{v:.4f}" if isinstance(v, float) else v


def _gflop(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "n/a"


def markdown(rows: list[dict], checks: list[dict], info: dict, args) -> str:
    lines = ["# Fine-tuning step benchmark", "",
             f"Written by `benchmarks/bench_finetune_step.py`; batch {args.batch}, {args.rounds} interleaved "
             f"rounds of {args.warmup} warm-up + {args.steps} timed steps per variant.", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" if k == "command" else f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "## Step time", "",
              "| variant | ms/step median | IQR | median per round |", "|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['ms_median']:.1f} | {r['ms_q25']:.1f}-{r['ms_q75']:.1f} | "
                     f"{r['round_medians_ms'].replace(';', ' / ')} |")
    growth = "CUDA peak growth MiB" if any("cuda_peak_growth_mib" in r for r in rows) else "peak RSS growth MiB"
    lines += ["", "## Sizes and memory", "",
              "Tensor peak: live tensors (weights, AdamW state, gradients, activations) at their "
              f"highest during steps, by {rows[0].get('tensor_peak_method', 'n/a') if rows else 'n/a'}; "
              "saved for backward: distinct storages one forward keeps for backward, weights excluded.", "",
              "Matmul GFLOP: forward + backward of one step, counted by torch's FlopCounterMode "
              "(bitsandbytes' 4-bit matmuls are invisible to it: QLoRA runs the same matmuls as LoRA "
              "on weights dequantised to float32).", "",
              "| variant | trainable params | trainable bytes | AdamW state bytes | frozen weight bytes "
              f"| matmul GFLOP/step | saved for backward MiB | tensor peak MiB | {growth} |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = r.get("cuda_peak_growth_mib", r["peak_rss_growth_mib"])
        lines.append(
            f"| {r['variant']} | {r['trainable_params']:,} | {r['trainable_bytes']:,} | "
            f"{r['optimizer_state_bytes']:,} | {r['frozen_weight_bytes']:,} | "
            f"{_gflop(r.get('matmul_gflop', ''))} | {r['saved_for_backward_mib']:.1f} | "
            f"{r.get('tensor_peak_mib', float('nan')):.1f} | {mem:.1f} |")
    lines += ["", "## Ratios against the targets of issue 3", "",
              "Ratio of pooled medians; range: the same ratio round by round (min..max), which the "
              "pooled ratio can fall just outside of.", "",
              "| check | ratio | range over rounds | target | result | note |", "|---|---:|---|---:|---|---|"]
    for c in checks:
        target = f"<= {c['target_max']:.2f}" if c["target_max"] != "" else ""
        lines.append(f"| {c['check']} | {c['ratio']:.3f} | {c['round_min']:.3f}..{c['round_max']:.3f} | "
                     f"{target} | {c['result']} | {c['note']} |")
    return "\n".join(lines) + "\n"


def profile(labels: list[str], batch: int, device: torch.device, steps: int = 10, top: int = 20):
    """Print torch.profiler's top operators (self CPU time) for a few steps of each variant."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    by_label = {v.label: v for v in make_variants()}
    unknown = [label for label in labels if label not in by_label]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; choose from {sorted(by_label)}")
    x, y = fixed_batch(batch, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for label in labels:
        v = by_label[label]
        v.build(device)
        v.run(v.feed(x, y, 5), device)
        feed = v.feed(x, y, steps)
        with torch_profile(activities=activities) as prof:
            times = v.run(feed, device)
        print(f"\n=== {label}: median {statistics.median(times) * 1e3:.1f} ms/step under the profiler, "
              f"{steps} steps ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch intra-op threads (default {DEFAULT_THREADS}; other counts add _<n>thread "
                        "to the file names)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant and round")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all variants")
    p.add_argument("--quick", action="store_true", help="1 round of 2 + 5 steps; writes nothing unless --out")
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false",
                   help="leave out the bare diagnostics (48 channel-independent tokens; fused LoRA)")
    p.add_argument("--paths", nargs="+", default=PATHS, choices=PATHS + [FUSED_PATH],
                   help=f"which paths to time (default {' '.join(PATHS)}; {FUSED_PATH}: fedhar with fused_lora)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for finetune_step[_cuda][_<n>thread].csv, _checks.csv and .md "
                        "(default results/bench; none with --quick)")
    p.add_argument("--profile", nargs="+", metavar="VARIANT", help='profile variants instead, e.g. "fedhar lora r8"')
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available on this machine (torch "
              f"{torch.__version__}): skipping the CUDA benchmark, nothing written.")
        return 0
    if args.profile:
        profile(args.profile, args.batch, device)
        return 0
    if args.quick:
        args.rounds, args.warmup, args.steps = 1, 2, 5
    out = args.out if args.out is not None else (None if args.quick else ROOT / "results" / "bench")

    info = machine_info(device, [f"benchmarks/{Path(__file__).name}"] + argv)
    info["load average at start"] = f"{os.getloadavg()[0]:.2f}"
    variants = make_variants(paths=args.paths, diagnostics=args.diagnostics)
    print(f"{len(variants)} variants, {args.rounds} rounds x ({args.warmup} + {args.steps}) steps, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {device}")
    rows = measure(variants, args.batch, args.warmup, args.steps, args.rounds, device)
    info["load average at end"] = f"{os.getloadavg()[0]:.2f}"
    checks = check_rows(rows)
    text = markdown(rows, checks, info, args)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = ("finetune_step" + ("_cuda" if device.type == "cuda" else "")
                + (f"_{args.threads}thread" if args.threads != DEFAULT_THREADS else ""))
        write_csv(out / f"{stem}.csv", CSV_FIELDS, rows)
        write_csv(out / f"{stem}_checks.csv", CHECK_FIELDS, checks)
        (out / f"{stem}.md").write_text(text)
        print(f"wrote {stem}.csv, {stem}_checks.csv and {stem}.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
