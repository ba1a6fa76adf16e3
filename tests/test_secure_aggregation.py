"""Secure aggregation with Flower's SecAgg+ (``--secagg``, simulations/secure_aggregation.py).

The protocol runs for real (Flower's workflow, its client mod, its key agreement, shares and
masks) on the inline engine: toy ClientApps that add known updates (no model, seconds), then
fedhar's own ClientApp in a tiny federation, compared with the same run without SecAgg+.
tests/test_deploy.py runs it on the deployment engine (SuperLink + SuperNodes).
"""

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as legacy_records

from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.inline import InlineGrid, node_id_of, task_identity
from simulations.rounds import NodeView, exchange, read_checkpoint
from simulations.secure_aggregation import (
    CLIP_KEY,
    MAX_WEIGHT_KEY,
    SecureAggregation,
    legacy_reply,
    masked_input,
    secure_mod,
    tolerance,
)
from strategies import RoundLog, make_strategy

RNG = np.random.default_rng(7)
GLOBAL = {"head.0.weight": RNG.normal(size=(4, 3)).astype(np.float32),
          "head.0.bias": RNG.normal(size=4).astype(np.float32),
          "head.1.num_batches_tracked": np.array(5, dtype=np.int64)}
UPDATES = {pid: {k: RNG.normal(scale=0.05, size=v.shape) for k, v in GLOBAL.items() if k != "head.1.num_batches_tracked"}
           for pid in range(4)}
WEIGHTS = {0: 30, 1: 50, 2: 20, 3: 45}


def toy_app(fail: int | None = None, nan: int | None = None, gone_before_unmask: int | None = None) -> ClientApp:
    """Clients that add UPDATES[pid] to what they received and report WEIGHTS[pid]; ``fail``
    raises in training (after sharing its keys: a dropout mid-round), ``nan`` sends NaN,
    ``gone_before_unmask`` sends its masked update and then fails the unmask stage."""
    app = ClientApp()

    def vanish(msg: Message, context: Context, call_next) -> Message:
        stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
        if stage == Stage.UNMASK and context.node_config["partition-id"] == gone_before_unmask:
            raise RuntimeError("gone before the unmask stage")
        return call_next(msg, context)

    @app.train(mods=[vanish, secure_mod])
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid == fail:
            raise RuntimeError(f"client {pid} crashed mid-round")
        out = {}
        for k, v in msg.content["arrays"].items():
            value = v.numpy()
            if k in UPDATES[pid]:
                value = (value + UPDATES[pid][k] * (np.nan if pid == nan else 1)).astype(value.dtype)
            else:
                value = value + 3  # an integer counter: does not travel, keeps the global's
            out[k] = Array(np.asarray(value))
        return Message(RecordDict({"arrays": ArrayRecord(out),
                                   "metrics": MetricRecord({"num-examples": WEIGHTS[pid], "partition-id": pid})}),
                       reply_to=msg)

    return app


def one_round(tmp_path, app: ClientApp, n: int = 4, secure: SecureAggregation | None = None, rule: str = "fedavg"):
    """(new global, rows of clients.csv, the SecureRound) of one train phase over ``n`` toy nodes."""
    grid = InlineGrid(app, n)
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = RoundLog(tmp_path / "clients.csv", [f"c{p}" for p in range(n)])
    log.partition_of = {node_id_of(p): p for p in range(n)}
    strategy = make_strategy(rule, n, n, log, **({"proximal_mu": 0.01} if rule == "fedprox" else {}))
    with task_identity(1):
        messages = list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                                                 ConfigRecord({}), NodeView(grid, [node_id_of(p) for p in range(n)])))
        if secure is None:
            new, _ = strategy.aggregate_train(1, exchange(grid, messages, 60))
            return new, log.rows, None
        result = secure.train(grid, messages, 1)
        return secure.aggregate(strategy, 1, result, log), log.rows, result


def secure(threshold: float = 0.5) -> SecureAggregation:
    return SecureAggregation(max_weight=max(WEIGHTS.values()), clip=8.0, threshold=threshold, timeout=60)


def assert_within_quantisation(got: ArrayRecord, want: ArrayRecord, weights: list[int]) -> float:
    tol = tolerance(8.0, weights, max(WEIGHTS.values()))
    worst = 0.0
    for key in GLOBAL:
        a, b = got[key].numpy(), want[key].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape
        if key == "head.1.num_batches_tracked":
            assert a == GLOBAL[key]  # integer tensors keep the global's value (they do not travel)
            continue
        np.testing.assert_allclose(a, b, rtol=0, atol=tol + 1e-6)  # + float32 rounding of the result
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
    return worst


@pytest.mark.parametrize("rule", ["fedavg", "fedprox"])  # FedIT's validation and Flower's FedProx's
def test_the_unmasked_aggregate_is_the_plain_weighted_mean_within_quantisation(tmp_path, rule):
    plain, _, _ = one_round(tmp_path / "plain", toy_app(), rule=rule)
    got, rows, result = one_round(tmp_path, toy_app(), secure=secure(), rule=rule)
    worst = assert_within_quantisation(got, plain, list(WEIGHTS.values()))
    print(f"toy {rule}, 4 clients: largest |secure - plain| {worst:.3g}; tolerance "
          f"{tolerance(8.0, list(WEIGHTS.values()), 50):.3g}")
    # the server never held a client's tensors: each reply is its metrics and a masked vector
    assert all(len(rec) == 0 for r in result.replies for rec in r.content.array_records.values())
    train = [r for r in rows if r["phase"] == "train"]
    assert [r["status"] for r in train] == ["ok"] * 4
    assert {r["partition_id"]: r["num_examples"] for r in train} == WEIGHTS  # the metrics travel in the clear
    coordinates = 1 + 12 + 4  # the weight, then the two float tensors
    assert all(8 * coordinates < r["bytes_sent"] < 8 * coordinates + 1000 for r in train)  # 64-bit masked integers
    assert [(r["status"], r["secagg_clients"]) for r in rows if r["phase"] == "aggregate"] == [("ok", 4)]
    # and far from what a single client sent: the mean is of all four
    assert not np.allclose(got["head.0.bias"].numpy(), GLOBAL["head.0.bias"] + UPDATES[1]["head.0.bias"], atol=1e-3)


def test_a_client_dropped_mid_round_is_unmasked_from_the_others_shares(tmp_path):
    """Client 1 shares its keys, then crashes while training: SecAgg+ rebuilds its pairwise
    masks from the others' shares of its key, and the result is the mean of the other three."""
    plain, _, _ = one_round(tmp_path / "plain", toy_app(fail=1))
    got, rows, _ = one_round(tmp_path, toy_app(fail=1), secure=secure())
    assert_within_quantisation(got, plain, [WEIGHTS[p] for p in (0, 2, 3)])
    by_pid = {r["partition_id"]: r for r in rows if r["phase"] == "train"}
    assert [r["secagg_clients"] for r in rows if r["phase"] == "aggregate"] == [3]
    assert by_pid[1]["status"] == "failed" and "client 1 crashed mid-round" in by_pid[1]["error"]
    assert all(by_pid[p]["status"] == "ok" for p in (0, 2, 3))


def test_a_client_gone_after_sending_its_masked_update_is_still_in_the_mean(tmp_path):
    """Its private mask is rebuilt from the others' shares of its seed: its update counts."""
    plain, _, _ = one_round(tmp_path / "plain", toy_app())
    got, rows, _ = one_round(tmp_path, toy_app(gone_before_unmask=2), secure=secure())
    assert_within_quantisation(got, plain, list(WEIGHTS.values()))
    assert [r["secagg_clients"] for r in rows if r["phase"] == "aggregate"] == [4]


def test_a_client_sending_nan_is_dropped_before_masking(tmp_path):
    plain, _, _ = one_round(tmp_path / "plain", toy_app(fail=2))
    got, rows, _ = one_round(tmp_path, toy_app(nan=2), secure=secure())
    assert_within_quantisation(got, plain, [WEIGHTS[p] for p in (0, 1, 3)])
    error = next(r for r in rows if r.get("partition_id") == 2)["error"]
    assert "the update of head.0.weight is not finite" in error


def test_too_many_dropouts_to_unmask_leave_the_global_unchanged_with_one_line(tmp_path):
    got, rows, result = one_round(tmp_path, toy_app(fail=3), secure=secure(threshold=1.0))
    assert got is None and result.mean is None
    assert "SecAgg+ halted: too few of the 4 clients left to unmask (threshold 4 of 4" in result.why
    assert {r["status"] for r in rows if r["phase"] == "train"} == {"not aggregated", "failed"}
    assert [r["status"] for r in rows if r["phase"] == "aggregate"] == ["skipped"]


def test_the_client_mod_masks_the_update_and_keeps_the_metrics():
    sent = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    trained = {k: Array(np.asarray(v + UPDATES[0].get(k, 1)).astype(v.dtype)) for k, v in GLOBAL.items()}
    config = ConfigRecord({"server-round": 1, MAX_WEIGHT_KEY: 50, CLIP_KEY: 8.0})
    with task_identity(1):
        msg = Message(RecordDict({"arrays": sent, "config": config}), dst_node_id=5, message_type="train")
    metrics = MetricRecord({"num-examples": 30, "train_loss": 0.5})

    def handler(m, c):
        return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=m)

    reply = legacy_reply(msg, None, handler)
    fitres = legacy_records.recorddict_to_fitres(reply.content, keep_input=True)
    assert fitres.num_examples == 30 and dict(reply.content["metrics"]) == dict(metrics)
    got = parameters_to_ndarrays(fitres.parameters)
    assert len(got) == 2  # the two float tensors, in the order sent; not the integer counter
    for arr, key in zip(got, ["head.0.weight", "head.0.bias"]):
        np.testing.assert_allclose(arr, trained[key].numpy().astype(np.float64) - GLOBAL[key], atol=0)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"head.0.bias": np.full(4, 9.0, np.float32)}), "reaches 9.*outside --secagg-clip 8"),
    (lambda t: t.update({"extra": np.zeros(2, np.float32)}), r"sends \['extra'\] besides them"),
    (lambda t: t.pop("head.0.weight"), r"leaves out \['head.0.weight'\]"),
    (lambda t: t.update({"head.0.bias": np.zeros(5, np.float32)}), r"has shape \(5,\), the server sent \(4,\)"),
])
def test_the_client_refuses_what_secagg_could_not_sum_faithfully(change, message):
    sent = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    trained = {k: v.copy() for k, v in GLOBAL.items()}
    change(trained)
    with pytest.raises(FedharError, match=message):
        masked_input(sent, ArrayRecord({k: Array(np.asarray(v)) for k, v in trained.items()}), 10, 50.0, 8.0)
    with pytest.raises(FedharError, match="must be an integer in 1..50"):
        masked_input(sent, sent, 51, 50.0, 8.0)


@pytest.mark.parametrize("strategy", ["fedex", "flora", "hetlora", "flexlora", "fedavgm", "fedadam", "fedyogi",
                                      "fedadagrad"])
def test_rules_that_need_each_reply_are_refused(strategy):
    with pytest.raises(FedharError, match=f"--secagg: --strategy {strategy} is not the weighted mean"):
        FLConfig(secagg=True, strategy=strategy)


def test_central_dp_and_other_settings_are_refused():
    with pytest.raises(FedharError, match="--secagg with central DP .* not both"):
        FLConfig(secagg=True, dp_epsilon=8.0)
    with pytest.raises(FedharError, match="--secagg with central DP"):
        FLConfig(secagg=True, dp_noise_multiplier=1.0)
    with pytest.raises(FedharError, match="federated fine-tuning"):
        FLConfig(secagg=True, arm="centralised")
    with pytest.raises(FedharError, match="--secagg-threshold must be in"):
        FLConfig(secagg_threshold=0.0)
    with pytest.raises(FedharError, match="SecAgg\\+ needs 2..1023 clients per round, got 1"):
        FLConfig(secagg=True, fraction_train=0.3).check_clients(3)
    for rule in ("fedavg", "fedit", "ffa", "fedsa", "fedprox"):
        FLConfig(secagg=True, strategy=rule)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, engine", [("fedavg", "inline"), ("ffa", "inline"), ("fedsa", "inline"),
                                              ("fedavg", "cohort")])
def test_a_federation_with_secagg_matches_the_plain_one_and_survives_a_dropout(tmp_path, strategy, engine):
    """fedhar's own ClientApp, 3 synthetic clients, client 1 failing in round 1 after sharing
    its keys: the new global equals the plain run's (inline engine) within quantisation. The
    cohort engine hands SecAgg+ messages to the ClientApp one by one, as the inline engine."""
    from simulations.run import run_inprocess
    from simulations.task import federation
    from tests.test_deploy import tiny

    outs = {}
    for name, secagg in (("plain", False), ("secure", True)):
        outs[name] = run_inprocess(tiny(tmp_path / name, rounds=1, secagg=secagg, inject_failure="1:1",
                                        strategy=strategy), engine=engine if secagg else "inline")
    privacy = json.loads((outs["secure"] / "config.json").read_text())["privacy"]
    assert privacy["secure_aggregation"]["protocol"].startswith("SecAgg+")
    rounds = pd.read_csv(outs["secure"] / "rounds.csv")
    clients = pd.read_csv(outs["secure"] / "clients.csv")
    assert list(rounds["clients_trained"]) == [2] and list(rounds["failed"]) == [1]
    aggregate = clients[clients["phase"] == "aggregate"]
    assert list(aggregate["status"]) == ["ok"] and list(aggregate["secagg_clients"]) == [2]
    train = clients[clients["phase"] == "train"].set_index("partition_id")
    assert train.loc[1, "status"] == "failed" and "client 1 fails in round 1" in train.loc[1, "error"]
    weights = [int(train.loc[p, "num_examples"]) for p in (0, 2)]
    secure_arrays = read_checkpoint(outs["secure"] / "checkpoint.pkl")["arrays"]
    plain_arrays = read_checkpoint(outs["plain"] / "checkpoint.pkl")["arrays"]
    assert secure_arrays.keys() == plain_arrays.keys()
    fed = federation(tiny(tmp_path / "secure", rounds=1))
    tol = tolerance(8.0, weights, max(len(t) for t, _ in fed.splits))  # the server's weight bound
    worst = 0.0
    for key, value in secure_arrays.items():
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_allclose(value, plain_arrays[key], rtol=1e-6, atol=tol, err_msg=key)
            worst = max(worst, float(np.abs(value.astype(np.float64) - plain_arrays[key]).max()))
    up = {name: int(pd.read_csv(out / "rounds.csv")["bytes_up"].sum()) for name, out in outs.items()}
    assert 1.9 < up["secure"] / up["plain"] < 2.1  # the masked vector is 64-bit integers
    print(f"{strategy} ({engine} engine): largest |secure - plain| {worst:.3g} over {len(secure_arrays)} tensors; tolerance {tol:.3g}; "
          f"uplink {up['secure']} bytes with SecAgg+, {up['plain']} without")
