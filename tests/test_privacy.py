"""Central DP (strategies/dp.py) and its accounting (fedhar/privacy.py): the noise matches the
accountant, clipping bounds every client's contribution, epsilon grows with the rounds, and
settings that promise nothing are refused."""

import math

import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from flwr.app import ConfigRecord

from fedhar.cli import main
from fedhar.privacy import _releases, epsilon_spent, noise_multiplier_for
from simulations.config import FLConfig
from strategies import RoundLog, make_strategy
from strategies.dp import DPSettings, clip_update, settings_for
from tests.test_lora_strategies import FakeGrid, as_numpy, replies_of, server_identity  # noqa: F401 (a fixture)


@pytest.mark.parametrize("epsilon, delta, rounds, q", [(8, 1e-5, 20, 1.0), (2, 1e-5, 50, 0.3), (1, 1e-6, 10, 1.0)])
def test_the_calibrated_noise_multiplier_spends_the_budget_and_no_more(epsilon, delta, rounds, q):
    z = noise_multiplier_for(epsilon, delta, q, rounds)
    assert epsilon_spent(z, q, rounds, delta) == pytest.approx(epsilon, rel=1e-3)
    assert epsilon_spent(z, q, rounds, delta) <= epsilon * (1 + 1e-6)
    assert epsilon_spent(0.97 * z, q, rounds, delta) > epsilon  # the smallest such noise, not just any
    # an independent method on the same mechanism: the PLD accountant's epsilon is tighter than
    # RDP's, and not by much
    pld = PLDAccountant()
    pld.compose(_releases(z, q, rounds))
    assert 0.6 * epsilon < pld.get_epsilon(delta) <= epsilon * 1.001
    if q == 1.0:  # T Gaussians have RDP T a / (2 z^2); the classical conversion bounds what the library reports
        classical = min(rounds * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in range(2, 200))
        assert epsilon <= classical * 1.001


def test_reported_epsilon_grows_with_every_release():
    settings = DPSettings(noise_multiplier=1.2, clip=1.0, expected_clients=5, sampling_rate=0.5, delta=1e-5)
    spent = [settings.epsilon(r) for r in range(0, 12)]
    assert spent[0] == 0 and all(b > a for a, b in zip(spent, spent[1:]))


def test_settings_follow_the_run_and_the_accountant():
    cfg = FLConfig(dp_epsilon=4.0, dp_delta=1e-3, rounds=5, fraction_train=0.5)
    s = settings_for(cfg, n_clients=10)
    assert (s.expected_clients, s.sampling_rate) == (5, 0.5)
    assert s.noise_multiplier == pytest.approx(noise_multiplier_for(4.0, 1e-3, 0.5, 5))
    assert s.noise_std(s.clip) == pytest.approx(s.noise_multiplier * 1.0 / 5)
    assert s.epsilon(5) == pytest.approx(4.0, rel=1e-3)
    given = settings_for(FLConfig(dp_noise_multiplier=0.7), n_clients=10)
    assert given.noise_multiplier == 0.7 and given.target_epsilon == 0


def test_clip_bounds_the_norm_over_all_tensors_together():
    rng = np.random.default_rng(0)
    update = {"a": rng.normal(size=(30, 4)), "b": rng.normal(size=7) * 10}
    clipped, norm = clip_update(update, 2.0)
    assert norm == pytest.approx(math.sqrt(sum((v ** 2).sum() for v in update.values())))
    assert math.sqrt(sum((v ** 2).sum() for v in clipped.values())) == pytest.approx(2.0)
    np.testing.assert_allclose(clipped["a"] / update["a"], 2.0 / norm)  # one scale for all: direction kept
    small = {"a": update["a"] * 1e-3}
    assert clip_update(small, 2.0)[0]["a"] is not None and np.allclose(clip_update(small, 2.0)[0]["a"], small["a"])


def _strategy(tmp_path, rule, settings, initial):
    strategy = make_strategy(rule, 3, 3, RoundLog(tmp_path / "clients.csv"), dp=settings)
    from flwr.app import Array, ArrayRecord

    strategy.configure_train(1, ArrayRecord({k: Array(np.array(v, order="C")) for k, v in initial.items()}),
                             ConfigRecord(), FakeGrid())
    return strategy


def _states(rng, initial, scales, drop=()):
    return [{k: (v + rng.normal(size=v.shape) * s).astype(v.dtype) for k, v in initial.items() if k not in drop}
            for s in scales]


def _lora_state(rng):
    return {"blocks.0.attn.q.lora_A.default.weight": rng.normal(size=(4, 16)).astype(np.float32),
            "blocks.0.attn.q.lora_B.default.weight": rng.normal(size=(16, 4)).astype(np.float32),
            "head.0.weight": rng.normal(size=(6, 16)).astype(np.float32)}


def test_the_noise_on_the_aggregate_has_the_calibrated_std(tmp_path, server_identity):  # noqa: F811
    rng = np.random.default_rng(1)
    initial = {"head.0.weight": rng.normal(size=(300, 200)).astype(np.float32)}
    settings = DPSettings(noise_multiplier=1.3, clip=0.5, expected_clients=3, sampling_rate=1.0, delta=1e-5)
    strategy = _strategy(tmp_path, "fedavg", settings, initial)
    arrays, metrics = strategy.aggregate_train(1, replies_of([initial] * 3, counts=[10, 50, 300]))
    noise = as_numpy(arrays)["head.0.weight"].astype(np.float64) - initial["head.0.weight"]
    assert noise.std() == pytest.approx(1.3 * 0.5 / 3, rel=0.02) and abs(noise.mean()) < 0.01
    assert metrics["dp-epsilon"] == pytest.approx(settings.epsilon(1))
    row = strategy.log.rows[0]
    assert row["phase"] == "aggregate" and row["dp_noise_std"] == pytest.approx(1.3 * 0.5 / 3)


@pytest.mark.parametrize("rule, drop", [("fedavg", ()), ("ffa", ("blocks.0.attn.q.lora_A.default.weight",)),
                                        ("fedsa", ("blocks.0.attn.q.lora_B.default.weight",))])
def test_no_client_moves_the_aggregate_by_more_than_clip_over_m(tmp_path, server_identity, rule, drop):  # noqa: F811
    """The sensitivity DP-FedAvg's noise is calibrated to: adding one client (however large its
    update, whatever its weight) changes the released global by at most clip / m."""
    rng = np.random.default_rng(2)
    initial = _lora_state(rng)
    initial = {k: v for k, v in initial.items() if not (rule == "ffa" and k in drop)}  # FFA: A never travels
    quiet = DPSettings(noise_multiplier=1e-12, clip=0.3, expected_clients=3, sampling_rate=1.0, delta=1e-5)
    clients = _states(rng, initial, [5.0, 0.001, 1e4], drop=drop)
    both = as_numpy(_strategy(tmp_path, rule, quiet, initial).aggregate_train(
        1, replies_of(clients[:2], counts=[10, 10]))[0])
    all_three = as_numpy(_strategy(tmp_path, rule, quiet, initial).aggregate_train(
        1, replies_of(clients, counts=[10, 10, 10_000]))[0])
    diff = math.sqrt(sum(((all_three[k].astype(np.float64) - both[k]) ** 2).sum() for k in both))
    assert 0.3 / 3 * 0.99 < diff <= 0.3 / 3 * 1.0001  # the huge update counts exactly clip/m
    moved = math.sqrt(sum(((both[k].astype(np.float64) - initial[k]) ** 2).sum() for k in both))
    small = clients[1]  # below the clip: passes unchanged, divided by m
    small_norm = math.sqrt(sum(((small[k].astype(np.float64) - initial[k]) ** 2).sum() for k in small))
    assert moved <= (0.3 + small_norm) / 3 * 1.0001
    if drop and rule == "fedsa":
        assert drop[0] not in both or np.array_equal(both[drop[0]], initial[drop[0]])  # B: never sent, never noised


@pytest.mark.parametrize("argv, words", [
    (["--dp-epsilon", "0"], "--dp-epsilon: must be > 0"),
    (["--dp-epsilon", "-2"], "--dp-epsilon: must be > 0"),
    (["--dp-epsilon", "8", "--dp-delta", "0.4"], "--dp-delta must be in (0, 1/3) for 3 clients"),
    (["--dp-epsilon", "8", "--dp-noise-multiplier", "1"], "not both"),
    (["--dp-epsilon", "8", "--strategy", "flora"], "central DP needs one of fedavg"),
    (["--dp-clip", "0"], "--dp-clip must be > 0"),
    (["--dp-sgd-noise", "1", "--mode", "qlora"], "use --mode lora or full"),
    (["--dp-sgd-noise", "1", "--strategy", "fedprox"], "not both"),
])
def test_settings_that_promise_nothing_are_one_line_errors(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["fl", "--engine", "inline", "--out-dir", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))  # refused first


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


TINY = ["--synthetic-domains", "2", "--synthetic-subjects", "3", "--pretrain-epochs", "1", "--batch-size", "32"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["inline", "ray", "flwr"])
def test_fl_with_a_budget_runs_on_every_engine_and_reports_what_it_spent(engine, tmp_path, cache, monkeypatch, capsys):
    import json

    import pandas as pd

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    out = tmp_path / engine
    assert main(["fl", "--dp-epsilon", "8", "--rounds", "2", "--engine", engine, "--strategy", "ffa",
                 "--out-dir", str(out), *TINY]) == 0
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["clients_trained"] == 2).all()
    assert 0 < rounds["dp_epsilon"][0] < rounds["dp_epsilon"][1] == pytest.approx(8.0, rel=1e-3)
    assert (rounds["dp_delta"] == 1e-5).all() and (rounds["dp_noise_std"] > 0).all()
    privacy = json.loads((out / "config.json").read_text())["privacy"]["central_dp"]
    assert privacy["epsilon_after_all_rounds"] == pytest.approx(8.0, rel=1e-3) and "B and a shared head" in privacy["protects"]
    assert privacy["noise_multiplier"] == pytest.approx(noise_multiplier_for(8.0, 1e-5, 1.0, 2))


@pytest.mark.parametrize("scale, direction", [(1e-4, -1), (1e3, +1)])
def test_adaptive_clipping_moves_the_bound_towards_the_median_update_norm(tmp_path, server_identity, scale,  # noqa: F811
                                                                          direction):
    rng = np.random.default_rng(3)
    initial = _lora_state(rng)
    settings = DPSettings(noise_multiplier=0.2, clip=1.0, expected_clients=3, sampling_rate=1.0, delta=1e-5,
                          adaptive=True)
    assert settings.update_noise_multiplier > 0.2  # the count's release is paid for by the updates' noise
    strategy = _strategy(tmp_path, "fedavg", settings, initial)
    strategy.aggregate_train(1, replies_of(_states(rng, initial, [scale] * 3), counts=[5, 5, 5]))
    # all updates below the bound: it shrinks by about exp(-0.2 * 0.5); all above: it grows as much
    assert direction * math.log(strategy.dp_clip) == pytest.approx(0.1, abs=0.06)
    assert strategy.log.rows[0]["dp_clipped"] == (1.0 if direction > 0 else 0.0)


@pytest.mark.slow
def test_a_resumed_private_run_keeps_counting_and_refuses_another_calibration(tmp_path, cache, monkeypatch, capsys):
    import pandas as pd

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    out = str(tmp_path / "run")
    base = ["fl", "--engine", "inline", "--dp-epsilon", "4", "--out-dir", out, *TINY]
    assert main([*base, "--rounds", "2", "--inject-failure", "0:2,1:2"]) == 2  # round 2: nobody trains, stops
    assert main([*base, "--rounds", "3", "--resume"]) == 2  # 3 rounds would need more noise per round
    assert "the DP mechanism differs" in capsys.readouterr().err
    assert main([*base, "--rounds", "2", "--resume"]) == 0
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    z = noise_multiplier_for(4.0, 1e-5, 1.0, 2)
    assert list(rounds["dp_epsilon"]) == pytest.approx([epsilon_spent(z, 1.0, r, 1e-5) for r in (1, 2)])
