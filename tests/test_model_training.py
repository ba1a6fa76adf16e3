"""Fine-tuning loop, evaluation metrics, and one training step of each of the three modes."""

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
from fedhar.model.mae import MAEConfig


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


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_a_training_step_of_each_mode_moves_only_its_trainable_weights_and_lowers_the_loss(mode):
    # (step times per mode are measured by benchmarks/bench_finetune_step.py, not here)
    torch.manual_seed(0)
    x = torch.randn(16, 6, 128)
    y = torch.arange(16) % 8
    model = prepare_for_finetune(Classifier.from_mae(MaskedAutoencoder(MAEConfig(depth=2)), 8), mode).train()
    params = dict(model.named_parameters())
    trainable = {k: p.detach().clone() for k, p in params.items() if p.requires_grad}
    frozen = {k: v.detach().clone() for k, v in model.state_dict().items()
              if k.endswith("weight") and not (k in params and params[k].requires_grad)}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(params[k].detach(), v) for k, v in trainable.items() if k.endswith("head.weight"))
    assert any(not torch.equal(params[k].detach(), v) for k, v in trainable.items() if "head" not in k)
    after = model.state_dict()
    assert (mode == "full") == (not frozen), sorted(frozen)[:3]  # full trains every weight
    assert all(torch.equal(after[k], v) for k, v in frozen.items()), "a frozen weight changed"
