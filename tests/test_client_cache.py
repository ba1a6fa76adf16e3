"""The client process's model cache (simulations/client_cache.py): a cached model, reset,
is the model a fresh build gives; whole federations give the committed reference tables
(tests/fixtures/reference_runs/, made by the code before the cache) within the tolerances
measured across CPUs and thread counts (tests/reference_runs.py), and a federation run twice on
one machine gives the same tables bit for bit."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from simulations import client_cache
from simulations.task import add_base_deltas, build_model, ensure_backbone, federation
from tests import reference_runs


@pytest.fixture(scope="module")
def cache(reference_cache):
    return reference_cache  # tests/conftest.py: the session's, filled with the reference entries


def state(model):
    return {**{n: p.detach().clone() for n, p in model.named_parameters()},
            **{n: b.clone() for n, b in model.named_buffers()}}


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_a_reused_model_is_reset_to_the_fresh_build(mode, cache, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    cfg = reference_runs.config("fedavg", cache / "unused")
    cfg = replace(cfg, mode=mode, backbone=str(ensure_backbone(cfg)))
    n = federation(cfg).labels.size
    client_cache.clear()
    first = client_cache.client_model(cfg, n, cfg.backbone, pid=0)
    fresh_rng = torch.get_rng_state()
    # a call changes everything a call can change: weights, BatchNorm statistics, gradients,
    # hooks, mode, the global generator
    opt = torch.optim.AdamW([p for p in first.parameters() if p.requires_grad], lr=0.1)
    first.train()
    first(torch.randn(8, 6, 128)).sum().backward()
    opt.step()
    add_base_deltas(first, {"encoder.blocks.0.attn.q": torch.ones(192, 192).numpy()})
    first.eval()
    torch.manual_seed(12345)

    again = client_cache.client_model(cfg, n, cfg.backbone, pid=1)  # same mode and rank: same model
    assert again is first
    assert torch.equal(torch.get_rng_state(), fresh_rng)
    assert again.training and all(p.grad is None for p in again.parameters())
    assert not any(m._forward_hooks for m in again.modules())
    fresh = build_model(cfg, n, cfg.backbone, 1)
    assert torch.equal(torch.get_rng_state(), fresh_rng)
    mine, theirs = state(again), state(fresh)
    assert mine.keys() == theirs.keys()
    for k in theirs:
        assert torch.equal(mine[k], theirs[k]), k
    x = torch.randn(4, 6, 128)
    again.eval(), fresh.eval()
    assert torch.equal(again(x), fresh(x))


def test_other_modes_ranks_and_seeds_get_models_of_their_own(cache, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    cfg = reference_runs.config("hetlora", cache / "unused")
    cfg = replace(cfg, backbone=str(ensure_backbone(cfg)))
    n = federation(cfg).labels.size
    client_cache.clear()
    a, b = (client_cache.client_model(cfg, n, cfg.backbone, pid=p) for p in (0, 1))  # ranks 4 and 8
    assert a is not b
    assert client_cache.client_model(cfg, n, cfg.backbone, pid=2) is a
    assert client_cache.client_model(cfg, n, cfg.backbone, pid=0, seed=7) is not a


@pytest.mark.slow
@pytest.mark.parametrize("case", list(reference_runs.CASES))
def test_federations_give_the_reference_tables(case, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    from simulations import task

    task._federation.cache_clear()
    assert reference_runs.compare(case, reference_runs.run_case(case, tmp_path / case)) == []


@pytest.mark.slow
def test_the_ray_engine_gives_the_reference_tables_too(cache, tmp_path, monkeypatch):
    """FedSA (client state kept between rounds in Flower's context) in Ray actors."""
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    from simulations import task

    task._federation.cache_clear()
    got = reference_runs.run_case("fedsa", tmp_path / "fedsa", engine="ray")
    assert reference_runs.compare("fedsa", got, ignore=("node_id",)) == []  # Flower's engine draws random node ids


@pytest.mark.slow
def test_a_federation_run_twice_on_one_machine_is_identical_bit_for_bit(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    from simulations import task

    task._federation.cache_clear()
    first, second = (reference_runs.run_case("hetlora", tmp_path / name) for name in ("first", "second"))
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name], check_exact=True)


@pytest.mark.slow
def test_a_one_client_change_in_aggregation_fails_the_references(cache, tmp_path, monkeypatch):
    """The tolerances still catch a real change: FedAvg weighting each client by its
    neighbour's example count (a subtle off-by-one; the counts differ by a few percent)."""
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    from simulations import task
    from strategies import fedit

    task._federation.cache_clear()
    real = fedit.lm.weighted_mean
    monkeypatch.setattr(fedit.lm, "weighted_mean", lambda states, weights: real(states, [*weights[1:], weights[0]]))
    problems = reference_runs.compare("fedavg", reference_runs.run_case("fedavg", tmp_path / "shifted"))
    assert problems, "an aggregation weighting clients off by one went unnoticed"


def test_the_reference_comparison_is_exact_on_counts_and_tolerant_on_floats():
    expected = pd.read_csv(reference_runs.REFERENCE_DIR / "fedavg" / "clients.csv")
    smallest = int(expected.loc[expected["phase"] == "evaluate", "num_examples"].min())
    check = lambda got: reference_runs.mismatches("fedavg", "clients", got, expected, smallest)  # noqa: E731
    assert check(expected.copy()) == []
    nudged = expected.assign(train_loss=expected["train_loss"] * (1 + 2e-3),                  # measured drift
                             accuracy=expected["accuracy"] + 3 / expected["num_examples"])     # 3 windows
    assert check(nudged) == []
    assert check(expected.assign(train_loss=expected["train_loss"] * 1.05))                     # 5%: caught
    assert check(expected.assign(accuracy=expected["accuracy"] + 6 / expected["num_examples"]))  # 6 windows
    assert check(expected.assign(bytes_received=expected["bytes_received"] + 4))                # exact
    assert check(expected.assign(status=["failed", *expected["status"][1:]]))


def test_record_nbytes_is_the_arrays_bytes():
    import numpy as np
    from flwr.app import Array, ArrayRecord

    arrays = {"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.int64), "c": np.zeros(0, np.float32)}
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    assert client_cache.record_nbytes(record) == sum(a.nbytes for a in arrays.values()) == 88
