"""Centralised fine-tuning of a pretrained backbone in one mode, with its full report.

One call = one run: build the classifier on the frozen (or, for ``full``, trainable)
backbone, train for a fixed number of epochs on the training windows, evaluate once on
the test windows (no model selection on test data), and report what a user compares
modes by: accuracy, macro-F1/precision/recall, trainable parameters, bytes of frozen
weights as stored, bytes of trainable weights, peak memory and time per epoch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from fedhar.console import progress
from fedhar.measure import PeakMemory
from fedhar.model import (
    Classifier,
    count_parameters,
    evaluate,
    finetune_epoch,
    frozen_weight_bytes,
    make_loader,
    prepare_for_finetune,
    trainable_bytes,
)
from fedhar.model.adapters import DEFAULT_TARGETS
from fedhar.model.mae import MaskedAutoencoder

# Full fine-tuning moves pretrained weights, so it takes a smaller step than adapters,
# which start at zero (the usual choice in the LoRA literature). The probe trains a fresh head.
DEFAULT_LR = {"full": 3e-4, "lora": 1e-3, "qlora": 1e-3, "probe": 1e-3}
#: "probe" is a diagnostic, not a fine-tuning mode: the head alone on the frozen backbone's
#: mean-pooled features (what the representation gives without any adaptation)
MODES = ("full", "lora", "qlora", "probe")


@dataclass(frozen=True)
class FinetuneConfig:
    mode: str = "lora"
    rank: int = 16
    alpha: float = 0.0  # 0 = 2 * rank
    dropout: float = 0.05
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.0  # 0 = DEFAULT_LR[mode]
    weight_decay: float = 0.01
    seed: int = 0
    nf4_blocksize: int = 64
    double_quant: bool = True
    targets: tuple[str, ...] = DEFAULT_TARGETS
    device: str = "cpu"  # "cuda" trains on the GPU (QLoRA then uses bitsandbytes' CUDA kernels)
    fused_lora: bool = False  # fedhar.model.fused_lora (applies where dropout is 0 or in eval)

    @property
    def effective_lr(self) -> float:
        return self.lr or DEFAULT_LR[self.mode]

    @property
    def effective_alpha(self) -> float:
        return self.alpha or 2.0 * self.rank


@dataclass
class FinetuneResult:
    accuracy: float
    macro_f1: float
    macro_precision: float
    macro_recall: float
    n_train: int
    n_test: int
    trainable_params: int
    total_params: int
    frozen_bytes: int
    trainable_bytes: int
    state_bytes: int  # frozen weights + trainable weights, their gradients and AdamW's two moments
    peak_mem_mb: float  # measured: RSS growth over the run (includes the runtime's own workspaces)
    sec_per_epoch: float
    train_loss: list[float] = field(default_factory=list)

    def row(self) -> dict:
        d = asdict(self)
        d["final_train_loss"] = d.pop("train_loss")[-1]
        return d


def build_classifier(mae: MaskedAutoencoder, n_classes: int, cfg: FinetuneConfig) -> Classifier:
    torch.manual_seed(cfg.seed)
    model = Classifier.from_mae(mae, n_classes)
    model = prepare_for_finetune(model, cfg.mode, rank=cfg.rank, alpha=cfg.effective_alpha,
                                 dropout=cfg.dropout, targets=cfg.targets,
                                 nf4_blocksize=cfg.nf4_blocksize, double_quant=cfg.double_quant,
                                 fused=cfg.fused_lora)
    # built (and NF4-quantised) on the CPU, then moved whole: Params4bit carries its codes
    # and quantisation state to the GPU, where bitsandbytes' CUDA kernels take over
    return model if cfg.device == "cpu" else model.to(cfg.device)


def frozen_features(encoder, x, batch_size: int = 512) -> torch.Tensor:
    """Mean-pooled encoder tokens of windows ``x`` (what the head sees), in eval mode, no gradients."""
    encoder.eval()
    device = next(encoder.parameters()).device
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    with torch.no_grad():
        parts = [encoder(x[i:i + batch_size].to(device)).mean(dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, encoder.config.dim, device=device)


def finetune(mae: MaskedAutoencoder, train_x, train_y, test_x, test_y, n_classes: int,
             cfg: FinetuneConfig = FinetuneConfig(), log=None, save_to: str = "", backbone_path: str = "",
             label_space: tuple[str, ...] = ()) -> FinetuneResult:
    """Fine-tune on (train_x, train_y), evaluate on (test_x, test_y); labels are 0..n_classes-1.

    mode "probe": the backbone stays frozen and unadapted; its features are computed once and
    only the head trains on them, with the same optimiser, schedule, batches and epochs
    (exactly what training the head behind a frozen encoder does, at a fraction of the cost).
    save_to: also save the trained model there (fedhar.model.saved: peft adapters, head, backbone).
    """
    save = (save_to, backbone_path, label_space)
    if cfg.mode == "probe":
        torch.manual_seed(cfg.seed)
        model = Classifier.from_mae(mae, n_classes).to(cfg.device)
        for p in model.encoder.parameters():
            p.requires_grad = False
        model.finetune_mode = "probe"
        train_x, test_x = frozen_features(model.encoder, train_x), frozen_features(model.encoder, test_x)
        return _train_and_report(model, model.head, train_x, train_y, test_x, test_y, cfg, log, save=save)
    return _train_and_report(None, None, train_x, train_y, test_x, test_y, cfg, log, mae=mae, n_classes=n_classes,
                             save=save)


def _train_and_report(model, trained, train_x, train_y, test_x, test_y, cfg: FinetuneConfig, log,
                      mae=None, n_classes: int = 0, save=("", "", ())) -> FinetuneResult:
    """Train ``trained`` (the part of ``model`` that sees the inputs given) and report on ``model``;
    save = (folder, backbone path, label names): save the model there (nothing when folder is "")."""
    loader = make_loader(train_x, train_y, cfg.batch_size, shuffle=True, seed=cfg.seed)
    losses, seconds = [], []
    # peak memory covers the model's own copy of the backbone (fp32 or NF4), adapters, head,
    # gradients, optimiser state and activations; run in a fresh process for clean numbers
    with PeakMemory(cfg.device) as memory:
        if model is None:
            model = trained = build_classifier(mae, n_classes, cfg)
        params = [p for p in trained.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.effective_lr, weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * len(loader))
        bar = progress(range(cfg.epochs), desc=f"{cfg.mode} epochs", unit="epoch")
        for epoch in bar:
            t0 = time.perf_counter()
            stats = finetune_epoch(trained, _Stepping(loader, schedule), optimizer)
            seconds.append(time.perf_counter() - t0)
            losses.append(stats.loss)
            bar.set_postfix(loss=f"{stats.loss:.4f}")
            if log:
                log(f"epoch {epoch + 1}/{cfg.epochs}  loss {stats.loss:.4f}  {seconds[-1]:.1f} s")
    metrics = evaluate(trained, test_x, test_y)
    if save[0]:
        from fedhar.model.saved import save_model

        save_model(model, save[0], save[1], save[2], cfg.rank, cfg.effective_alpha)
    count = count_parameters(model)
    return FinetuneResult(
        accuracy=metrics["accuracy"], macro_f1=metrics["macro_f1"],
        macro_precision=metrics["macro_precision"], macro_recall=metrics["macro_recall"],
        n_train=len(train_y), n_test=len(test_y),
        trainable_params=count.trainable, total_params=count.total,
        frozen_bytes=frozen_weight_bytes(model), trainable_bytes=trainable_bytes(model),
        state_bytes=frozen_weight_bytes(model) + 4 * sum(p.numel() * p.element_size() for p in params),
        peak_mem_mb=memory.peak_mb, sec_per_epoch=float(np.median(seconds)), train_loss=losses,
    )


def finetune_checkpoint(backbone_path: str, train_x, train_y, test_x, test_y, n_classes: int, *,
                        threads: int = 0, **kwargs) -> FinetuneResult:
    """``finetune`` on a backbone loaded from disk: picklable, for a fresh worker process.
    ``kwargs`` are finetune's options by name (backbone_path is set here)."""
    if threads:
        torch.set_num_threads(threads)
    from fedhar.model.adapters import prepare_for_finetune  # noqa: F401  (imports peft before measuring)
    from fedhar.model.checkpoint import load_mae

    if kwargs.get("cfg", FinetuneConfig()).mode != "full":
        import peft  # noqa: F401  (import cost is not training memory)
    return finetune(load_mae(backbone_path), train_x, train_y, test_x, test_y, n_classes,
                    backbone_path=str(backbone_path), **kwargs)


def _exit_with_parent() -> None:
    """In a worker process: stop when the process that started it dies (a killed study must
    not leave orphans training on, and stealing the CPU from the next one)."""
    import os
    import threading

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def finetune_in_fresh_process(backbone_path, *args, **kwargs) -> FinetuneResult:
    """Run ``finetune_checkpoint`` in a new process, so peak memory is not blurred by
    memory the allocator kept from earlier runs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_worker, str(backbone_path), *args, **kwargs).result()


def _worker(*args, **kwargs) -> FinetuneResult:
    _exit_with_parent()
    return finetune_checkpoint(*args, **kwargs)


class _Stepping:
    """Iterate a loader and step the LR schedule after every batch."""

    def __init__(self, loader, schedule):
        self.loader, self.schedule = loader, schedule

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.schedule.step()

    def __len__(self):
        return len(self.loader)
