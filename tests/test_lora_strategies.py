"""The LoRA strategies aggregate Flower replies as lora_math says, and turn bad replies away."""

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from strategies import RoundLog, recording
from strategies import lora_math as lm
from strategies.lora_strategies import FedExLoRA, FedIT, FedSALoRA, FFALoRA, FLoRA, HetLoRA, delta_key
from tests.test_lora_math import LAYERS, a_key, b_key, client_state

ALPHA = 16.0
COUNTS = [120, 35, 300]


def _metadata(node_id, message_type=MessageType.TRAIN):
    return Metadata(run_id=1, message_id="", src_node_id=node_id, dst_node_id=0, reply_to_message_id="",
                    group_id="", created_at=time.time(), ttl=3600, message_type=message_type)


def reply(state, n, node_id):
    """A ClientApp's train reply as the server receives it."""
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.array(v, order="C")) for k, v in state.items()}),
                          "metrics": MetricRecord({"num-examples": n, "train_loss": 0.5})})
    return Message(content=content, metadata=_metadata(node_id))


def states(seed=0, ranks=(4, 4, 4), **kw):
    rng = np.random.default_rng(seed)
    return [client_state(rng, rank=r, **kw) for r in ranks]


def replies_of(client_states, counts=COUNTS, first_node=1):
    return [reply(s, n, first_node + i) for i, (s, n) in enumerate(zip(client_states, counts))]


def as_numpy(record):
    return {k: v.numpy() for k, v in record.items()}


def reference(state):
    return {k: np.shape(v) for k, v in state.items()}


class FakeGrid:
    """Just enough of a Grid for configure_train: three connected nodes."""

    def get_node_ids(self):
        return [1, 2, 3]


@pytest.fixture
def server_identity(monkeypatch):
    """Messages built by configure_* need the identity a running ServerApp has."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def make(cls, **kw):
    return cls(min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3, **kw)


def test_fedit_averages_every_tensor_and_reports_inexactness(tmp_path):
    clients = states(seed=1)
    log = RoundLog(tmp_path / "clients.csv")
    strategy = recording(FedIT)(log=log, min_train_nodes=3, reference_shapes=reference(clients[0]))
    arrays, metrics = strategy.aggregate_train(1, replies_of(clients))
    got, mean = as_numpy(arrays), lm.weighted_mean(clients, COUNTS)
    for key in clients[0]:
        assert got[key].dtype == clients[0][key].dtype
        expected = np.rint(mean[key]) if got[key].dtype == np.int64 else mean[key]  # counters stay ints
        np.testing.assert_allclose(got[key], expected, rtol=1e-5, atol=1e-5)
    expected = np.mean([lm.inexactness(clients, COUNTS, layer) for layer in LAYERS])
    assert metrics["lora-inexactness"] == pytest.approx(expected) and metrics["lora-inexactness"] > 0
    assert metrics["rejected-replies"] == 0 and metrics["train_loss"] == pytest.approx(0.5)
    assert len(log.rows) == 3 and (tmp_path / "clients.csv").exists()


def test_bad_replies_are_rejected_with_a_reason_and_never_averaged():
    good = states(seed=2)
    nan = dict(good[0])
    nan["head.0.weight"] = np.full((6, 12), np.nan, np.float32)
    wrong_shape = {**good[1], b_key(LAYERS[0]): np.zeros((12, 5), np.float32)}
    no_weight = reply(good[2], 1, node_id=13)
    no_weight.content["metrics"] = MetricRecord({"train_loss": 0.1})
    failed = Message(error=Error(code=1, reason="client crashed"), metadata=_metadata(14))
    replies = replies_of(good) + [reply(nan, 500, 10), reply(wrong_shape, 500, 11), no_weight, failed]

    strategy = make(FedIT, reference_shapes=reference(good[0]))
    arrays, metrics = strategy.aggregate_train(4, replies)
    np.testing.assert_allclose(as_numpy(arrays)["head.0.weight"],
                               lm.weighted_mean(good, COUNTS)["head.0.weight"], rtol=1e-5, atol=1e-6)
    assert metrics["rejected-replies"] == 3
    assert set(strategy.last_rejected) == {10, 11, 13}
    assert strategy.last_rejected[10] == "head.0.weight: 72 NaN and 0 Inf value(s)"
    assert "shape (12, 5), expected (12, 4)" in strategy.last_rejected[11]
    assert "'num-examples' must be a finite number > 0" in strategy.last_rejected[13]
    assert {r["round"] for r in strategy.rejections} == {4}

    all_bad = make(FedIT, reference_shapes=reference(good[0]))
    assert all_bad.aggregate_train(5, [reply(nan, 5, 10)]) == (None, None)


def test_without_a_reference_the_common_layout_wins():
    clients = states(seed=3)
    odd = {**clients[0], "head.0.weight": np.zeros((6, 7), np.float32)}
    strategy = make(FedIT)
    arrays, _ = strategy.aggregate_train(1, replies_of(clients) + [reply(odd, 900, 9)])
    assert list(strategy.last_rejected) == [9]
    assert as_numpy(arrays)["head.0.weight"].shape == (6, 12)


def test_ffa_keeps_the_shared_a_averages_b_and_rejects_a_moved_a(server_identity):
    rng = np.random.default_rng(4)
    shared = {layer: rng.normal(size=(4, 12)) for layer in LAYERS}
    clients = states(seed=5, shared_a=shared)
    strategy = make(FFALoRA)
    initial = ArrayRecord({k: Array(v) for k, v in clients[0].items()})
    strategy.configure_train(1, initial, ConfigRecord({"lr": 0.01}), FakeGrid())

    moved = {**clients[2], a_key(LAYERS[0]): clients[2][a_key(LAYERS[0])] + 1e-3}
    without_a = {k: v for k, v in clients[1].items() if ".lora_A." not in k}
    replies = [reply(clients[0], 120, 1), reply(without_a, 35, 2), reply(moved, 300, 3)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert list(strategy.last_rejected) == [3] and "must not train A" in strategy.last_rejected[3]
    got = as_numpy(arrays)
    for layer in LAYERS:
        np.testing.assert_array_equal(got[a_key(layer)], clients[0][a_key(layer)])
        expected = lm.ideal_product(clients[:2], COUNTS[:2], layer)  # exact: A is shared
        np.testing.assert_allclose(got[b_key(layer)] @ got[a_key(layer)].astype(float), expected, atol=1e-4)


def test_fedsa_sends_and_returns_no_b(server_identity):
    clients = states(seed=6)
    strategy = make(FedSALoRA)
    initial = ArrayRecord({k: Array(v) for k, v in clients[0].items()})
    messages = list(strategy.configure_train(1, initial, ConfigRecord({"lr": 0.01}), FakeGrid()))
    assert len(messages) == 3
    sent = messages[0].content["arrays"]
    assert not any(".lora_B." in k for k in sent) and a_key(LAYERS[0]) in sent

    arrays, _ = strategy.aggregate_train(1, replies_of(clients))
    got, mean = as_numpy(arrays), lm.weighted_mean(clients, COUNTS)
    assert not any(".lora_B." in k for k in got)
    np.testing.assert_allclose(got[a_key(LAYERS[1])], mean[a_key(LAYERS[1])], rtol=1e-5, atol=1e-6)
    # clients may also leave B out of their reply
    no_b = [{k: v for k, v in s.items() if ".lora_B." not in k} for s in clients]
    assert strategy.aggregate_train(2, replies_of(no_b))[0] is not None and not strategy.last_rejected


def test_fedex_global_is_exact_and_residuals_accumulate(server_identity):
    clients = states(seed=7)
    strategy = make(FedExLoRA, lora_alpha=ALPHA)
    initial = ArrayRecord({k: Array(v) for k, v in clients[0].items()})
    sent = next(iter(strategy.configure_train(1, initial, ConfigRecord(), FakeGrid()))).content["arrays"]
    assert sent[delta_key(LAYERS[1])].numpy().shape == (20, 12)
    assert not sent[delta_key(LAYERS[1])].numpy().any()  # nothing to add before round 1

    arrays, metrics = strategy.aggregate_train(1, replies_of(clients))
    got, s = as_numpy(arrays), ALPHA / 4
    for layer in LAYERS:
        model = got[delta_key(layer)] + s * got[b_key(layer)] @ got[a_key(layer)]
        np.testing.assert_allclose(model, s * lm.ideal_product(clients, COUNTS, layer), atol=1e-4)
    assert metrics["lora-inexactness"] > 0

    again = states(seed=8)
    got2 = as_numpy(strategy.aggregate_train(2, replies_of(again))[0])
    residual = lm.fedex_residual(again, COUNTS, s)
    for layer in LAYERS:
        np.testing.assert_allclose(got2[delta_key(layer)], got[delta_key(layer)] + residual[layer], atol=1e-4)
    # a client sending a delta back is malformed
    bad = {**again[0], delta_key(LAYERS[0]): got[delta_key(LAYERS[0])]}
    strategy.aggregate_train(3, [reply(bad, 10, 7)] + replies_of(again[1:]))
    assert "unexpected 1 tensor(s)" in strategy.last_rejected[7]


def test_flora_merges_heterogeneous_ranks_exactly(server_identity):
    ranks = (2, 8, 4)
    clients = states(seed=9, ranks=ranks)
    strategy = make(FLoRA, lora_alpha=ALPHA)
    initial = ArrayRecord({k: Array(v) for k, v in states(seed=0, ranks=(4,))[0].items()})
    sent = next(iter(strategy.configure_train(1, initial, ConfigRecord(), FakeGrid()))).content["arrays"]
    assert not any(lm.split_adapter_key(k) for k in sent) and delta_key(LAYERS[0]) in sent

    arrays, metrics = strategy.aggregate_train(1, replies_of(clients))
    assert not strategy.last_rejected
    got = as_numpy(arrays)
    assert not any(lm.split_adapter_key(k) for k in got)
    scales = [ALPHA / r for r in ranks]
    for layer in LAYERS:
        np.testing.assert_allclose(got[delta_key(layer)], lm.ideal_product(clients, COUNTS, layer, scales),
                                   atol=1e-4)
        assert strategy.last_stacks[layer][0].shape == (sum(ranks), 12)
    assert metrics["flora-stack-params"] == sum(ranks) * (12 + 12) + sum(ranks) * (12 + 20)
    heads = [{"w": s["head.0.weight"]} for s in clients]
    np.testing.assert_allclose(got["head.0.weight"], lm.weighted_mean(heads, COUNTS)["w"], rtol=1e-5, atol=1e-6)
    # the next round's merge adds on top
    more = states(seed=10, ranks=(1, 1, 2))
    got2 = as_numpy(strategy.aggregate_train(2, replies_of(more))[0])
    expected = got[delta_key(LAYERS[0])] + lm.ideal_product(more, COUNTS, LAYERS[0], [ALPHA, ALPHA, ALPHA / 2])
    np.testing.assert_allclose(got2[delta_key(LAYERS[0])], expected, atol=1e-4)


def test_hetlora_aggregates_mixed_ranks_and_sends_each_node_its_truncation(server_identity):
    ranks = (2, 8, 4)
    clients = states(seed=11, ranks=ranks)
    strategy = make(HetLoRA)
    initial = ArrayRecord({k: Array(v) for k, v in states(seed=0, ranks=(8,))[0].items()})
    first = list(strategy.configure_train(1, initial, ConfigRecord(), FakeGrid()))
    assert all(m.content["arrays"][a_key(LAYERS[0])].numpy().shape == (8, 12) for m in first)

    too_big = states(seed=12, ranks=(16,))[0]
    arrays, _ = strategy.aggregate_train(1, replies_of(clients) + [reply(too_big, 50, 9)])
    assert list(strategy.last_rejected) == [9] and "rank 16 outside 1..8" in strategy.last_rejected[9]
    got = as_numpy(arrays)
    expected = lm.hetlora_aggregate(clients, COUNTS, max_rank=8)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], np.rint(value) if "num_batches" in key else value, rtol=1e-5, atol=1e-6)
    assert strategy.node_ranks[1] == {LAYERS[0]: 2, LAYERS[1]: 2}

    grid = FakeGrid()
    for configure, kind in ((strategy.configure_train, MessageType.TRAIN),
                            (strategy.configure_evaluate, MessageType.EVALUATE)):
        messages = {m.metadata.dst_node_id: m for m in configure(2, arrays, ConfigRecord(), grid)}
        assert messages[1].metadata.message_type == kind
        for node, rank in zip((1, 2, 3), ranks):
            sent = as_numpy(messages[node].content["arrays"])
            assert lm.adapter_ranks(sent) == {LAYERS[0]: rank, LAYERS[1]: rank}
            truncated = lm.hetlora_truncate(got, rank)
            np.testing.assert_allclose(sent[b_key(LAYERS[1])], truncated[b_key(LAYERS[1])], rtol=1e-6)
            assert messages[node].content["config"]["server-round"] == 2
