"""FlexLoRA: the weighted mean of the clients' products, handed back by truncated SVD."""

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from strategies import lora_math as lm
from strategies.flexlora import FlexLoRA, flexlora_aggregate, svd_factors
from tests.test_lora_math import LAYERS, a_key, b_key
from tests.test_lora_strategies import COUNTS, FakeGrid, as_numpy, make, replies_of, server_identity, states  # noqa: F401

ALPHA = 16.0


def scales_of(client_states):
    return [{layer: ALPHA / r for layer, r in lm.adapter_ranks(s).items()} for s in client_states]


def test_svd_at_full_rank_reproduces_the_product_exactly():
    product = np.random.default_rng(0).normal(size=(20, 12))
    for scale in (1.0, 2.5):
        A, B = svd_factors(product, 12, scale)
        assert A.shape == (12, 12) and B.shape == (20, 12)
        np.testing.assert_allclose(scale * B @ A, product, atol=1e-12)
        np.testing.assert_allclose(A @ A.T, np.eye(12), atol=1e-12)  # A = V^T: orthonormal rows
    with pytest.raises(ValueError, match="rank 13 outside 1..12"):
        svd_factors(product, 13)


def test_the_aggregate_is_the_weighted_mean_of_the_products_any_ranks():
    clients = states(seed=3, ranks=(2, 4, 3))
    full = 12  # min(d_out, d_in) of both layers: no truncation
    out = flexlora_aggregate(clients, COUNTS, full, scales_of(clients), ALPHA / full)
    for layer in LAYERS:
        ideal = lm.ideal_product(clients, COUNTS, layer, [ALPHA / r for r in (2, 4, 3)])
        np.testing.assert_allclose(ALPHA / full * out[b_key(layer)] @ out[a_key(layer)], ideal, atol=1e-10)
    p = np.asarray(COUNTS, float) / sum(COUNTS)
    np.testing.assert_allclose(out["head.0.weight"], sum(pk * s["head.0.weight"] for pk, s in zip(p, clients)),
                               rtol=1e-6)


def test_truncation_is_the_best_low_rank_approximation():
    clients = states(seed=4, ranks=(4, 4, 4))
    out = flexlora_aggregate(clients, COUNTS, 3, scales_of(clients), ALPHA / 3)
    for layer in LAYERS:
        ideal = lm.ideal_product(clients, COUNTS, layer, [ALPHA / 4] * 3)
        U, S, Vt = np.linalg.svd(ideal)
        best = U[:, :3] * S[:3] @ Vt[:3]
        np.testing.assert_allclose(ALPHA / 3 * out[b_key(layer)] @ out[a_key(layer)], best, atol=1e-10)


def test_server_aggregates_replies_and_sends_each_node_its_own_rank(server_identity):  # noqa: F811
    ranks = (2, 8, 4)
    clients = states(seed=11, ranks=ranks)
    strategy = make(FlexLoRA, lora_alpha=ALPHA)
    initial = ArrayRecord({k: Array(v) for k, v in states(seed=0, ranks=(8,))[0].items()})
    list(strategy.configure_train(1, initial, ConfigRecord(), FakeGrid()))
    arrays, _ = strategy.aggregate_train(1, replies_of(clients))
    assert not strategy.last_rejected
    got = as_numpy(arrays)
    ideal = {layer: lm.ideal_product(clients, COUNTS, layer, [ALPHA / r for r in ranks]) for layer in LAYERS}
    messages = {m.metadata.dst_node_id: m for m in strategy.configure_train(2, arrays, ConfigRecord(), FakeGrid())}
    for node, rank in zip((1, 2, 3), ranks):
        sent = as_numpy(messages[node].content["arrays"])
        assert lm.adapter_ranks(sent) == {LAYERS[0]: rank, LAYERS[1]: rank}  # its own rank
        for layer in LAYERS:
            A, B = sent[a_key(layer)].astype(np.float64), sent[b_key(layer)].astype(np.float64)
            assert A.shape == (rank, 12) and B.shape[1] == rank
            U, S, Vt = np.linalg.svd(ideal[layer])
            best = U[:, :rank] * S[:rank] @ Vt[:rank]  # the rank-r truncated SVD of the mean product
            np.testing.assert_allclose(ALPHA / rank * B @ A, best, rtol=1e-4, atol=1e-4 * np.abs(best).max())
    # the global (rank 8 = max_rank) holds the mean product up to its rank-8 truncation
    for layer in LAYERS:
        U, S, Vt = np.linalg.svd(ideal[layer])
        np.testing.assert_allclose(ALPHA / 8 * got[b_key(layer)].astype(np.float64) @ got[a_key(layer)],
                                   U[:, :8] * S[:8] @ Vt[:8], atol=1e-4 * np.abs(ideal[layer]).max())


@pytest.mark.slow
def test_a_tiny_federation_with_heterogeneous_ranks_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    from simulations.config import FLConfig
    from simulations.run import run_inprocess

    cfg = FLConfig(synthetic_domains=3, synthetic_subjects=3, pretrain_epochs=1, rounds=2, batch_size=32,
                   out_dir=str(tmp_path / "run"), strategy="flexlora", client_ranks="4,8,16", rank=16)
    out = run_inprocess(cfg, engine="inline")
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    assert (rounds["clients_trained"] == 3).all() and (rounds["rejected"] == 0).all()
    assert (rounds["accuracy"] > 0.2).all()  # above chance (1/6)
    sent = clients[clients["phase"] == "train"].groupby("partition_id")["bytes_sent"].max()
    assert sent[0] < sent[1] < sent[2]  # rank 4 < 8 < 16 adapters travel back
