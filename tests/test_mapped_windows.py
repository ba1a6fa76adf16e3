"""Large window sets stay in their cache file and are read per client (issue 12: 10,000
clients on one machine); clients may evaluate only every k-th round."""

import numpy as np
import pandas as pd
import pytest

from fedhar.data import WindowSet, load, mapped, splits
from fedhar.data.partition import by_subject
from fedhar.data.synthetic import SyntheticConfig
from simulations import task
from simulations.config import FLConfig

SMALL = SyntheticConfig(n_domains=2, subjects_per_domain=3, seconds_per_activity=10.0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_large_windows_are_read_on_demand_and_equal_the_loaded_ones(cache, monkeypatch):
    eager = load("synthetic", synthetic=SMALL)
    assert isinstance(eager.windows.x, np.ndarray) and not eager.from_cache
    monkeypatch.setattr(mapped, "MAP_ABOVE_BYTES", 0)  # every entry counts as large
    again = load("synthetic", synthetic=SMALL)
    x = again.windows.x
    assert again.from_cache and isinstance(x, mapped.MappedRows)
    assert x.shape == eager.windows.x.shape and x.nbytes == eager.windows.x.nbytes
    rows = np.array([3, 0, 7, len(x) - 1])
    np.testing.assert_array_equal(x[rows], eager.windows.x[rows])
    np.testing.assert_array_equal(again.windows.subset(rows).x, eager.windows.subset(rows).x)
    np.testing.assert_array_equal(np.asarray(x), eager.windows.x)


def test_chunked_statistics_agree_with_the_one_pass_ones(cache, monkeypatch):
    eager = load("synthetic", synthetic=SMALL).windows
    monkeypatch.setattr(mapped, "MAP_ABOVE_BYTES", 0)
    monkeypatch.setattr(splits, "FIT_CHUNK_ROWS", 100)  # several chunks, each with both domains
    lazy = load("synthetic", synthetic=SMALL).windows
    rows = np.arange(0, len(eager), 3)
    exact, chunked = splits.Normaliser.fit(eager.subset(rows)), splits.Normaliser.fit(lazy, rows=rows)
    assert exact.mean.keys() == chunked.mean.keys() == {"synthetic-d0", "synthetic-d1"}
    for name in exact.mean:
        np.testing.assert_allclose(chunked.mean[name], exact.mean[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(chunked.std[name], exact.std[name], rtol=1e-5)


def test_clients_read_only_their_own_windows(cache, monkeypatch):
    cfg = FLConfig(partition="subject", synthetic_domains=2, synthetic_subjects=3)
    task._federation.cache_clear()
    eager = task.federation(cfg)
    eager_clients = [task.client_data(cfg, pid) for pid in range(len(eager.parts))]
    task._federation.cache_clear()
    monkeypatch.setattr(mapped, "MAP_ABOVE_BYTES", 0)
    lazy = task.federation(cfg)
    try:
        assert isinstance(lazy.windows.x, mapped.MappedRows)  # the driver holds no client's samples
        assert lazy.client_names == eager.client_names
        for (tr, te), (etr, ete) in zip(lazy.splits, eager.splits):
            np.testing.assert_array_equal(tr, etr) and np.testing.assert_array_equal(te, ete)
        for pid, want in enumerate(eager_clients):
            got = task.client_data(cfg, pid)
            np.testing.assert_array_equal(got.train_y, want.train_y)
            np.testing.assert_array_equal(got.test_y, want.test_y)
            # the same windows; normalised with statistics that agree to float32 rounding
            np.testing.assert_allclose(got.train_x, want.train_x, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got.test_x, want.test_x, rtol=1e-4, atol=1e-5)
    finally:
        task._federation.cache_clear()


def test_by_subject_groups_as_one_pass_per_subject_would():
    rng = np.random.default_rng(0)
    n = 500
    ws = WindowSet(np.zeros((n, 6, 4), np.float32), rng.integers(0, 3, n),
                   rng.integers(1, 13, n), rng.choice(["b", "a", "c-2"], n).astype("<U32"))
    keys = ws.subject_keys()
    want = {key: np.flatnonzero(keys == key) for key in sorted(set(keys.tolist()))}
    got = by_subject(ws)
    assert list(got) == list(want)  # the same names in the same order ("a/10" before "a/2")
    assert all(np.array_equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)


@pytest.mark.slow
def test_clients_evaluate_every_kth_round_and_the_last(tmp_path, cache):
    from simulations.run import run_inprocess

    cfg = FLConfig(synthetic_domains=2, synthetic_subjects=2, pretrain_epochs=1, rounds=3, batch_size=32,
                   client_eval_every=2, out_dir=str(tmp_path / "run"))
    out = run_inprocess(cfg, engine="inline")
    clients = pd.read_csv(out / "clients.csv")
    evaluated = sorted(clients.loc[clients["phase"] == "evaluate", "round"].unique().tolist())
    assert evaluated == [2, 3]
    assert sorted(clients.loc[clients["phase"] == "train", "round"].unique().tolist()) == [1, 2, 3]
    rounds = pd.read_csv(out / "rounds.csv").set_index("round")
    assert np.isnan(rounds.loc[1, "accuracy"]) and rounds.loc[[2, 3], "accuracy"].notna().all()
