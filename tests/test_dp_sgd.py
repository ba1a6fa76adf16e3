"""Record-level DP-SGD (fedhar/model/dp_sgd.py): per-window clipping as a loop over windows
computes it, the noise the accountant is told about, and the epsilon each client reports."""

import numpy as np
import pytest
import torch
from torch import nn

from fedhar.model.dp_sgd import dp_sgd_epoch, sampling_rate, steps_per_epoch
from fedhar.privacy import epsilon_spent


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 64), nn.BatchNorm1d(64), nn.GELU(), nn.Linear(64, 3))


def data(n=40):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 6, generator=g) * 3, torch.randint(0, 3, (n,), generator=g)


def one_step(model, x, y, clip, noise):
    """One DP-SGD step on every window (batch >= windows: q = 1), plain SGD with lr 1:
    the parameters move by minus the privatised gradient."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    _, steps = dp_sgd_epoch(model, x, y, opt, batch_size=len(x), clip=clip, noise_multiplier=noise)
    assert steps == 1
    return {n: before[n] - p.detach() for n, p in model.named_parameters()}


def test_each_windows_gradient_is_clipped_on_its_own():
    x, y = data()
    got = one_step(tiny_model(), x, y, clip=0.05, noise=0.0)
    model = tiny_model()
    model.train()
    model[2].eval()  # BatchNorm on its running statistics, as DP-SGD runs it
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    norms = []
    for i in range(len(x)):  # one backward per window: the slow, obvious way
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        norms.append(float(norm))
        for n, p in model.named_parameters():
            expected[n] += p.grad * min(1.0, 0.05 / float(norm))
    assert min(norms) > 0.05  # every window was clipped: the test is about clipping
    for n in expected:
        torch.testing.assert_close(got[n], expected[n] / len(x), rtol=1e-4, atol=1e-7)
    # so no single window moves the parameters by more than clip / expected batch
    assert torch.sqrt(sum(v.pow(2).sum() for v in got.values())) <= 0.05 + 1e-6


def test_the_noise_has_std_noise_multiplier_times_clip_over_the_batch():
    x, y = data()
    clean = one_step(tiny_model(), x, y, clip=0.05, noise=0.0)
    noisy = one_step(tiny_model(), x, y, clip=0.05, noise=2.0)
    noise = torch.cat([(noisy[n] - clean[n]).flatten() for n in clean])
    assert float(noise.std()) == pytest.approx(2.0 * 0.05 / len(x), rel=0.05)


def test_the_accounting_inputs():
    assert steps_per_epoch(1000, 64) == 16 and sampling_rate(1000, 64) == 0.064
    assert sampling_rate(10, 64) == 1.0 and steps_per_epoch(10, 64) == 1
    assert epsilon_spent(1.0, 0.064, 32, 1e-5) > epsilon_spent(1.0, 0.064, 16, 1e-5) > 0


@pytest.mark.slow
def test_clients_report_their_record_level_epsilon_every_round(tmp_path, monkeypatch):
    import pandas as pd

    from simulations.config import FLConfig
    from simulations.run import run_inprocess
    from simulations.task import client_data

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    cfg = FLConfig(synthetic_domains=2, synthetic_subjects=3, pretrain_epochs=1, rounds=2, batch_size=32,
                   dp_sgd_noise=1.0, dp_sgd_clip=1.0, out_dir=str(tmp_path / "run"))
    out = run_inprocess(cfg, engine="inline")
    clients = pd.read_csv(out / "clients.csv")
    train = clients[(clients["phase"] == "train") & (clients["status"] == "ok")]
    assert len(train) == 4
    for _, row in train.iterrows():
        n = len(client_data(cfg, int(row["partition_id"])).train_y)
        steps = steps_per_epoch(n, 32) * int(row["round"])
        assert row["dp_sgd_epsilon"] == pytest.approx(epsilon_spent(1.0, sampling_rate(n, 32), steps, 1e-5))
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds["dp_sgd_epsilon_max"][1] > rounds["dp_sgd_epsilon_max"][0] > 0
    assert np.isfinite(rounds["accuracy"]).all()
