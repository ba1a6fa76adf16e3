"""Fine-tuning loop, evaluation metrics, and a one-off step timing of the three modes."""

import time

import numpy as np
import pytest
import torch

from fedhar.model import (
    Classifier,
    MaskedAutoencoder,
    classification_metrics,
    evaluate,
    finetune_epoch,
    make_loader,
    prepare_for_finetune,
)


def separable_problem(n=96, n_classes=3, seed=0):
    """Class c is a sine of frequency c + 1 on every channel, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    t = np.linspace(0, 2 * np.pi, 128)
    x = np.sin(np.outer(y + 1, t))[:, None, :].repeat(6, axis=1) + 0.3 * rng.standard_normal((n, 6, 128))
    return x.astype(np.float32), y.astype(np.int64)


def test_metrics_match_a_hand_computed_example():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred)
    # per class precision 1, 1/2, 1/2; recall 2/3, 1/2, 1; F1 0.8, 0.5, 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_precision"] == pytest.approx(2 / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["n"] == 6


def test_metrics_count_never_predicted_and_absent_classes_as_zero():
    m = classification_metrics([0, 0, 1, 1], [0, 0, 0, 0])
    assert m["macro_precision"] == pytest.approx(0.25)  # class 1 never predicted: precision 0
    assert m["macro_recall"] == pytest.approx(0.5)
    explicit = classification_metrics([0, 0, 1, 1], [0, 0, 1, 1], classes=[0, 1, 2])
    assert explicit["macro_f1"] == pytest.approx(2 / 3)  # class 2 absent but asked for
    with pytest.raises(ValueError, match="zero samples"):
        classification_metrics([], [])


def test_lora_finetuning_reduces_the_loss_and_evaluate_reports_it():
    torch.manual_seed(0)
    model = prepare_for_finetune(Classifier.from_mae(MaskedAutoencoder(), 3), "lora", rank=4)
    x, y = separable_problem()
    loader = make_loader(x, y, batch_size=32, seed=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = finetune_epoch(model, loader, opt)
    for _ in range(3):
        last = finetune_epoch(model, loader, opt)
    assert first.samples == last.samples == 96 and last.skipped == 0
    assert last.loss < 0.5 * first.loss
    model.train()
    metrics = evaluate(model, x, y)
    assert model.training  # evaluate restores the mode it found
    assert metrics["accuracy"] > 0.9 and metrics["macro_f1"] > 0.9


def test_finetune_epoch_skips_single_sample_batches_and_says_so():
    torch.manual_seed(0)
    model = prepare_for_finetune(Classifier.from_mae(MaskedAutoencoder(), 3), "lora", rank=2)
    x, y = separable_problem(n=9)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    stats = finetune_epoch(model, make_loader(x, y, batch_size=4, shuffle=False), opt)
    assert (stats.samples, stats.skipped) == (8, 1)


def test_print_step_time_of_each_mode_at_batch_64():
    # Measured once for the record (run with -s to see it); not asserted: machines differ.
    torch.manual_seed(0)
    pretrained = MaskedAutoencoder()
    x = torch.randn(64, 6, 128)
    y = torch.arange(64) % 8
    lines = []
    for mode in ("full", "lora", "qlora"):
        model = prepare_for_finetune(Classifier.from_mae(pretrained, 8), mode).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for _ in range(6):
            start = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - start)
        lines.append(f"{mode}: {1000 * float(np.median(times[1:])):.1f} ms/step")
    print(f"\nstep time at batch 64 ({torch.get_num_threads()} threads): " + ", ".join(lines))
