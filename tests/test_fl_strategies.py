"""Every strategy end to end (two in-process rounds on synthetic data), failures, resume."""

import pandas as pd
import pytest

from simulations.config import FLConfig
from simulations.run import run_inprocess
from strategies import STRATEGIES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(reference_cache):
    return reference_cache  # tests/conftest.py: the tiny synthetic windows and backbone, shared


def tiny(out_dir, **changes) -> FLConfig:
    base = dict(synthetic_domains=3, synthetic_subjects=3, pretrain_epochs=1, rounds=2, local_epochs=1,
                batch_size=32, out_dir=str(out_dir))
    return FLConfig(**{**base, **changes})


def tables(out):
    return pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")


STRATEGY_SETTINGS = {
    "hetlora": {"client_ranks": "4,8,16", "rank": 16},
    "flora": {"client_ranks": "4,8,8"},
}


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - {"fedit"}))
def test_two_rounds_with_every_strategy(strategy, tmp_path, cache, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    # the inline engine: the same ClientApp/ServerApp, no Ray start-up per run (the Ray engine
    # gives identical numbers: tests/test_fl_inline.py; its failure path is tested below)
    out = run_inprocess(tiny(tmp_path / strategy, strategy=strategy, **STRATEGY_SETTINGS.get(strategy, {})),
                        engine="inline")
    rounds, clients = tables(out)
    assert list(rounds["round"]) == [1, 2]
    assert (rounds["clients_trained"] == 3).all()
    assert (rounds["failed"] == 0).all() and (rounds["rejected"] == 0).all()
    assert rounds["accuracy"].notna().all()
    # above chance (1/6) after every round; FedAvgM's first server step is 1 - momentum = 0.1
    # of the averaged update (its effective step reaches FedAvg's only as momentum builds up)
    learning = rounds["accuracy"].iloc[-1:] if strategy == "fedavgm" else rounds["accuracy"]
    assert (learning > 0.2).all()
    sent = clients[clients["phase"] == "train"]["bytes_sent"]
    # rank 8 on q,k,v,o (192->192) and w1, w2 (192<->576) of 6 blocks: 8 * 3072 * 6 adapter
    # weights (589,824 bytes) + the head; FFA and FedSA leave A or B (half of them) at home
    adapter_bytes = 4 * 8 * 3072 * 6
    if strategy in ("ffa", "fedsa"):
        assert sent.max() == sent.min() < 693_792 - adapter_bytes / 2 + 1
    elif strategy not in ("hetlora", "flora"):
        assert sent.max() == 693_792  # adapters + head (+ BatchNorm statistics)


def test_a_failing_and_a_corrupt_client_do_not_stop_the_federation(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    out = run_inprocess(tiny(tmp_path / "faults", inject_failure="1:1:raise,2:1:nan"))
    rounds, clients = tables(out)
    first = clients[(clients["round"] == 1) & (clients["phase"] == "train")].set_index("partition_id")
    assert first.loc[1, "status"] == "failed" and "inject-failure" in first.loc[1, "error"]
    assert first.loc[2, "status"] == "rejected" and "NaN" in first.loc[2, "error"]
    assert first.loc[0, "status"] == "ok"
    assert list(rounds["failed"]) == [1, 0] and list(rounds["rejected"]) == [1, 0]
    assert (rounds["clients_trained"] == [1, 3]).all()
    assert rounds["accuracy"].notna().all()


def test_resume_continues_with_identical_results(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    straight = run_inprocess(tiny(tmp_path / "straight", rounds=3, fraction_train=0.67), engine="inline")
    # the same run, "crashed" after round 2, then resumed to round 3
    run_inprocess(tiny(tmp_path / "resumed", rounds=2, fraction_train=0.67), engine="inline")
    resumed = run_inprocess(tiny(tmp_path / "resumed", rounds=3, fraction_train=0.67, resume=True), engine="inline")
    a, b = tables(straight)[1], tables(resumed)[1]
    cols = ["round", "phase", "partition_id", "status", "train_loss", "accuracy", "macro_f1"]
    def ordered(df):  # replies arrive in any order; compare per (round, phase, client)
        return df[cols].sort_values(["round", "phase", "partition_id"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(ordered(a), ordered(b), check_exact=True)  # one machine: bit for bit
    assert (tables(straight)[0]["clients_trained"] == 2).all()  # 2 of 3 clients sampled per round
