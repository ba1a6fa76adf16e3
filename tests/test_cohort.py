"""The cohort engine (simulations/cohort.py, fedhar/model/cohort.py) against the one-client path.

Tolerance. Both sides compute the same float32 maths in a different grouping: the frozen
projections multiply a stack of several clients' rows (GEMM blocking differs with the row
count), the LoRA terms run as batched matmuls, the head's BatchNorm statistics are computed
here instead of by ``F.batch_norm`` (which accumulates in float64). Each such difference is a
rounding of ~1e-7 relative per operation; a few AdamW steps (whose normalised update
``m / sqrt(v)`` passes small gradient differences on at full size) amplify them. Measured on
the development machine (Xeon, AVX-512, torch 2.13 CPU): trained tensors within 2e-6
absolute of the one-client path after 3-6 steps, losses within 1e-6, the federations'
tables within 2e-5 (train_loss 2e-6, drift columns 1.5e-5, accuracies equal). The tests
allow 1e-4 absolute and relative (rtol) for tensors and tables: 50x the measured
differences, yet 10 to 100x below what one wrong step, one wrong dropout mask or one
client's data in another's batch changes (checked by hand: a mask drawn from the wrong
generator moves the trained head by ~1e-3). Accuracies are compared with the same
tolerance; a prediction that flips on a near tie would show as a 1/n difference.
Every comparison is within one test run on one machine: no committed floats.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from fedhar.model import Classifier, finetune_epoch, make_loader, predict, prepare_for_finetune, trainable_state_dict
from fedhar.model.cohort import Cohort, Layout, supports
from fedhar.model.mae import MAEConfig, MaskedAutoencoder
from tests import reference_runs

LR = 2e-3
MEAN_TOL = 1e-5  # mean |difference| of a trained tensor
ATOL = RTOL = 1e-4  # losses and the tables' continuous columns
METRIC_TOL = 0.05  # a client's accuracy / F1: one flipped near-tie window of ~45 is 0.022
# The first head linear's bias feeds BatchNorm, which subtracts the batch mean: its true
# gradient is 0, and what either path computes is rounding noise (~1e-9) that AdamW's
# normalised step turns into moves of up to lr. So the two paths' values differ by up to
# lr per step, as two runs of the one-client path on different BLAS builds would; the
# BatchNorm running mean follows it. Neither changes what the model computes in training
# (the batch mean removes it), and in evaluation they enter as their difference.
GAUGE = {"head.0.bias", "head.1.running_mean"}


def tiny_model(mode="lora", rank=4, classes=3, seed=0) -> Classifier:
    torch.manual_seed(seed)
    mae = MaskedAutoencoder(MAEConfig(dim=48, depth=2, heads=4, ffn=96, decoder_dim=32, decoder_depth=1,
                                      decoder_heads=4, decoder_ffn=64))
    torch.manual_seed(seed + 1)
    model = Classifier.from_mae(mae, classes)
    prepare_for_finetune(model, mode, rank=rank, alpha=2 * rank)
    with torch.no_grad():  # peft starts B at 0: give every client a different, non-zero B
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    return model


def client_data(n: int, seed: int, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, 128, generator=g).numpy(), torch.randint(0, classes, (n,), generator=g).numpy()


def one_client(model, x, y, seed, rng_state, epochs=2, batch=8, lr=LR):
    """What ``task.train_local`` does for one client (finetune_epoch, AdamW, seeded loader)."""
    torch.set_rng_state(rng_state)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    loader = make_loader(x, y, batch, shuffle=True, seed=seed)
    losses = [finetune_epoch(model, loader, opt).loss for _ in range(epochs)]
    return trainable_state_dict(model), losses


def schedule(x, y, seed, epochs=2, batch=8):
    loader = make_loader(x, y, batch, shuffle=True, seed=seed)
    return [(bx, by) for _ in range(epochs) for bx, by in loader if len(bx) >= 2]


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_a_cohort_trains_each_client_as_it_would_train_alone(mode):
    """Three clients with different data sizes (so different step counts and ragged last
    batches, one of size 1, skipped), different starting adapters, each its own dropout stream."""
    sizes, seeds = [37, 17, 25], [11, 12, 13]  # 37 % 8 = 5, 17 % 8 = 1 (a size-1 batch), 25 % 8 = 1
    template = tiny_model(mode)
    starts, alone, alone_losses, rngs = [], [], [], []
    for c, (n, seed) in enumerate(zip(sizes, seeds)):
        model = copy.deepcopy(template)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * (c + 1))
        starts.append(trainable_state_dict(model))
        torch.manual_seed(100 + c)
        rngs.append(torch.get_rng_state())
        x, y = client_data(n, seed)
        state, losses = one_client(model, x, y, seed, rngs[-1])
        alone.append(state)
        alone_losses.append(losses)
    cohort = Cohort(copy.deepcopy(template))
    gens = []
    for rng in rngs:
        gens.append(torch.Generator())
        gens[-1].set_state(rng)
    scheds = [schedule(*client_data(n, seed), seed) for n, seed in zip(sizes, seeds)]
    assert len({len(s) for s in scheds}) == 3  # different step counts: the stack shrinks as clients finish
    trained, losses = cohort.train(starts, scheds, gens, lr=LR, weight_decay=0.01)
    for c in range(3):
        assert trained[c].keys() == alone[c].keys()
        for k in alone[c]:
            if k in GAUGE:  # no true gradient: both sides follow rounding noise, by at most lr per step
                bound = 2 * LR * len(scheds[c])
                assert float((trained[c][k] - alone[c][k]).abs().max()) <= bound, k
                continue
            diff = (trained[c][k].float() - alone[c][k].float()).abs()
            assert float(diff.mean()) <= MEAN_TOL, k  # the same computation...
            assert float(diff.max()) <= LR * len(scheds[c]), k  # ...up to AdamW's amplified rounding on a few elements
        moved = max(float((trained[c][k] - starts[c][k]).abs().max()) for k in cohort.trainable if k not in GAUGE)
        assert moved > 20 * ATOL  # the clients did train, by far more than the tolerance
        assert len(losses[c]) == len(scheds[c])
        first = len(schedule(*client_data(sizes[c], seeds[c]), seeds[c], epochs=1))  # finetune_epoch's epoch-1 mean
        n_first = [len(y) for _, y in scheds[c][:first]]
        epoch1 = sum(loss * n for loss, n in zip(losses[c], n_first)) / sum(n_first)
        assert abs(epoch1 - alone_losses[c][0]) <= ATOL
    # evaluation: every client's own adapters and head on its own windows
    windows = [torch.as_tensor(client_data(n, s + 50)[0]) for n, s in zip(sizes, seeds)]
    preds = cohort.predict(trained, windows, max_rows=20)  # chunks split clients
    for c in range(3):
        model = copy.deepcopy(template)
        from fedhar.model import load_trainable_state_dict
        load_trainable_state_dict(model, alone[c])
        assert np.array_equal(preds[c].numpy(), predict(model, windows[c].numpy()))
        even = torch.as_tensor(client_data(10, 70 + c)[0])  # equal sizes: the batched in-place path
        assert np.array_equal(cohort.predict(trained, [even] * 3)[c].numpy(), predict(model, even.numpy()))


def test_layout_pads_only_for_ragged_clients_and_drops_the_padding():
    x = torch.arange(10.0).reshape(5, 2)
    even = Layout([2, 2])
    assert even.pad(x[:4]).shape == (2, 2, 2) and even.pad(x[:4]).data_ptr() == x.data_ptr()  # a view
    ragged = Layout([3, 1, 1])
    padded = ragged.pad(x)
    assert padded.shape == (3, 3, 2)
    assert torch.equal(padded[1, 1:], torch.zeros(2, 2))
    assert torch.equal(ragged.unpad(padded), x)


def test_what_a_cohort_cannot_stack_is_named():
    full = tiny_model()
    full.finetune_mode = "full"
    assert "mode full" in supports(full)
    assert supports(tiny_model()) == ""
    with pytest.raises(ValueError, match="cannot train"):
        Cohort(full)


# -- whole federations: the cohort engine's tables against the inline engine's ----------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("FEDHAR_CACHE_DIR", str(path))
    reference_runs.fill_cache(path)
    yield path
    mp.undo()


def is_metric(column: str) -> bool:
    """A column counting predictions: a near tie decided the other way moves it by a window."""
    return any(w in column for w in ("accuracy", "f1", "precision", "recall", "acc_", "gap"))


def assert_tables_close(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for name in a:
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns), name
        assert len(x) == len(y), name
        for col in x.columns:
            if pd.api.types.is_numeric_dtype(x[col]) and is_metric(col):
                diff = np.abs(y[col].to_numpy(float) - x[col].to_numpy(float))
                assert np.nanmax(diff, initial=0) <= METRIC_TOL, f"{name}.{col}"
                assert np.nanmean(diff) <= METRIC_TOL / 5 if len(diff) else True, f"{name}.{col}"
            elif pd.api.types.is_numeric_dtype(x[col]):
                np.testing.assert_allclose(y[col].to_numpy(float), x[col].to_numpy(float), atol=ATOL, rtol=RTOL,
                                           err_msg=f"{name}.{col}")
            else:
                assert x[col].fillna("").tolist() == y[col].fillna("").tolist(), f"{name}.{col}"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fedavg", "fedsa", "ffa", "hetlora", "local-head", "qlora-mixed"])
def test_cohort_engine_tables_equal_the_inline_engines(case, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    inline = reference_runs.run_case(case, tmp_path / "inline", engine="inline")
    cohort = reference_runs.run_case(case, tmp_path / "cohort", engine="cohort")
    assert_tables_close(inline, cohort)


@pytest.mark.slow
def test_rules_the_cohort_does_not_stack_run_inline_with_a_notice(cache, tmp_path, monkeypatch, caplog):
    """FLoRA's clients build fresh adapters every round and add the stacked update to their
    frozen base: they are delivered one at a time, so the tables are the inline engine's bit
    for bit, and the log says so once."""
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    inline = reference_runs.run_case("flora", tmp_path / "inline", engine="inline")
    with caplog.at_level("INFO", logger="flwr"):
        cohort = reference_runs.run_case("flora", tmp_path / "cohort", engine="cohort")
    for name in inline:
        pd.testing.assert_frame_equal(inline[name], cohort[name])
    notices = [r for r in caplog.records if "cohort engine:" in r.getMessage()]
    assert len(notices) == 1 and "one at a time" in notices[0].getMessage()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["fedavg", "hetlora"])
def test_a_round_prepared_in_slices_gives_the_inline_tables(case, cache, tmp_path, monkeypatch):
    """Large federations are prepared a slice of messages at a time (only a slice's windows in
    memory): slices of 2 messages, cohorts of 2, give the inline engine's tables."""
    import simulations.cohort
    from simulations.run import run_inprocess

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    monkeypatch.setattr(simulations.cohort, "PREPARED_AT_ONCE", 2)
    prepared = []
    inner = simulations.cohort.CohortGrid._run_slice

    def run_slice(self, ids, *a, **k):
        prepared.append(len(ids))
        return inner(self, ids, *a, **k)

    monkeypatch.setattr(simulations.cohort.CohortGrid, "_run_slice", run_slice)
    inline = reference_runs.run_case(case, tmp_path / "inline", engine="inline")
    cohort = reference_runs.results(run_inprocess(reference_runs.config(case, tmp_path / "cohort"), engine="cohort",
                                                  cohort_size=2))
    assert max(prepared) == 2 and len(prepared) > 4
    assert_tables_close(inline, cohort)
