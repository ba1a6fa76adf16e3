"""The aggregation rules of federated LoRA reproduce (or miss) sum_k p_k s_k B_k A_k as claimed."""

import numpy as np
import pytest

from strategies import lora_math as lm

LAYERS = ("encoder.blocks.0.attn.q", "encoder.blocks.1.ffn.w1")
D_IN, D_OUT = {LAYERS[0]: 12, LAYERS[1]: 12}, {LAYERS[0]: 12, LAYERS[1]: 20}
WEIGHTS = [120, 35, 300, 9]  # unequal example counts


def a_key(layer):
    return f"{layer}.lora_A.default.weight"


def b_key(layer):
    return f"{layer}.lora_B.default.weight"


def client_state(rng, rank=4, shared_a=None, head_shift=0.0):
    """A trainable_state_dict as a client sends it: adapters of ``rank`` plus a head."""
    state = {}
    for layer in LAYERS:
        a = shared_a[layer] if shared_a else rng.normal(size=(rank, D_IN[layer]))
        state[a_key(layer)] = a.astype(np.float32)
        state[b_key(layer)] = rng.normal(size=(D_OUT[layer], rank)).astype(np.float32)
    state["head.0.weight"] = (rng.normal(size=(6, 12)) + head_shift).astype(np.float32)
    state["head.1.running_mean"] = rng.normal(size=6).astype(np.float32)
    state["head.1.num_batches_tracked"] = np.array(rng.integers(1, 100), dtype=np.int64)
    return state


def clients(seed=0, ranks=(4, 4, 4, 4), **kw):
    rng = np.random.default_rng(seed)
    return [client_state(rng, rank=r, **kw) for r in ranks]


def p_of(weights):
    w = np.asarray(weights, float)
    return w / w.sum()


def test_keys_split_into_adapter_layers_and_others():
    state = clients()[0]
    layers = lm.adapter_layers(state)
    assert set(layers) == set(LAYERS)
    A, B = layers[LAYERS[1]]
    assert A.shape == (4, 12) and B.shape == (20, 4) and A.dtype == np.float64
    assert lm.other_keys(state) == ["head.0.weight", "head.1.running_mean", "head.1.num_batches_tracked"]
    assert lm.adapter_ranks(state) == {LAYERS[0]: 4, LAYERS[1]: 4}
    with pytest.raises(ValueError, match="without both"):
        lm.adapter_layers({a_key("x"): np.zeros((2, 3))})


def test_weighted_mean_is_fedavg_on_every_tensor():
    states = clients()
    mean = lm.weighted_mean(states, WEIGHTS)
    p = p_of(WEIGHTS)
    for key in states[0]:
        expected = sum(pk * s[key].astype(float) for pk, s in zip(p, states))
        np.testing.assert_allclose(mean[key], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="finite and > 0"):
        lm.weighted_mean(states, [1, 0, 1, 1])


def test_fedit_error_equals_the_pairwise_formula():
    states = clients(seed=1)
    for layer in LAYERS:
        err = lm.fedit_error(states, WEIGHTS, layer)
        np.testing.assert_allclose(err, lm.pairwise_error_formula(states, WEIGHTS, layer), atol=1e-10)
        # and it is what FedAvg on A and B separately misses
        mean = lm.weighted_mean(states, WEIGHTS)
        naive = mean[b_key(layer)] @ mean[a_key(layer)]
        np.testing.assert_allclose(naive + err, lm.ideal_product(states, WEIGHTS, layer), atol=1e-10)
        assert np.linalg.norm(err) > 1e-3


def test_fedit_is_exact_when_all_a_or_all_b_agree():
    rng = np.random.default_rng(2)
    shared = {layer: rng.normal(size=(4, D_IN[layer])) for layer in LAYERS}
    same_a = clients(seed=3, shared_a=shared)
    same_b = clients(seed=4)
    for s in same_b[1:]:
        for layer in LAYERS:
            s[b_key(layer)] = same_b[0][b_key(layer)]
    for states in (same_a, same_b):
        for layer in LAYERS:
            assert np.abs(lm.fedit_error(states, WEIGHTS, layer)).max() < 1e-10
            assert lm.inexactness(states, WEIGHTS, layer) < 1e-12


def test_inexactness_zero_for_identical_clients_positive_otherwise():
    one = clients(seed=5)[0]
    assert lm.inexactness([one, one, one], [1, 2, 3], LAYERS[0]) < 1e-12  # 0 up to rounding
    drifted = clients(seed=5)
    value = lm.inexactness(drifted, WEIGHTS, LAYERS[0])
    assert 0 < value < np.inf
    # B at its zero initialisation: nothing to aggregate, nothing missed
    zero_b = [{**s, b_key(LAYERS[0]): np.zeros((12, 4), np.float32)} for s in drifted]
    assert lm.inexactness(zero_b, WEIGHTS, LAYERS[0]) == 0.0


def test_fedex_mean_product_plus_residual_is_the_ideal_update():
    states, scale = clients(seed=6), 16 / 4
    residual = lm.fedex_residual(states, WEIGHTS, scale)
    mean = lm.weighted_mean(states, WEIGHTS)
    for layer in LAYERS:
        assert residual[layer].shape == (D_OUT[layer], D_IN[layer])
        got = scale * mean[b_key(layer)] @ mean[a_key(layer)] + residual[layer]
        np.testing.assert_allclose(got, scale * lm.ideal_product(states, WEIGHTS, layer), atol=1e-10)
    w0 = np.ones((D_OUT[LAYERS[1]], D_IN[LAYERS[1]]))
    np.testing.assert_allclose(lm.apply_residual(w0, residual[LAYERS[1]]), w0 + residual[LAYERS[1]])


def test_flora_stack_is_exact_with_heterogeneous_ranks():
    ranks = (2, 8, 4, 1)
    states = clients(seed=7, ranks=ranks)
    scales = [16 / r for r in ranks]  # peft's alpha / r differs per client
    stacks = lm.flora_stack(states, WEIGHTS, scales)
    for layer in LAYERS:
        A_stack, B_stack = stacks[layer]
        assert A_stack.shape == (sum(ranks), D_IN[layer]) and B_stack.shape == (D_OUT[layer], sum(ranks))
        ideal = lm.ideal_product(states, WEIGHTS, layer, scales)
        expected = sum(pk * sk * s[b_key(layer)].astype(float) @ s[a_key(layer)].astype(float)
                       for pk, sk, s in zip(p_of(WEIGHTS), scales, states))
        np.testing.assert_allclose(ideal, expected, atol=1e-10)
        np.testing.assert_allclose(B_stack @ A_stack, ideal, atol=1e-10)


def test_ffa_with_shared_frozen_a_is_exact():
    rng = np.random.default_rng(8)
    shared = {layer: rng.normal(size=(4, D_IN[layer])) for layer in LAYERS}
    states = clients(seed=9, shared_a=shared)
    agg = lm.ffa_aggregate(states, WEIGHTS)
    for layer in LAYERS:
        np.testing.assert_array_equal(agg[a_key(layer)], shared[layer].astype(np.float32))
        np.testing.assert_allclose(agg[b_key(layer)] @ agg[a_key(layer)],
                                   lm.ideal_product(states, WEIGHTS, layer), atol=1e-10)
    np.testing.assert_allclose(agg["head.0.weight"], lm.weighted_mean(states, WEIGHTS)["head.0.weight"])
    # clients that froze A need not send it
    no_a = [{k: v for k, v in s.items() if ".lora_A." not in k} for s in states]
    assert not any(".lora_A." in k for k in lm.ffa_aggregate(no_a, WEIGHTS))


def test_ffa_refuses_clients_whose_a_moved():
    states = clients(seed=10)  # every client has its own A
    with pytest.raises(ValueError, match=r"FFA-LoRA: .*lora_A.* differs"):
        lm.ffa_aggregate(states, WEIGHTS)


def test_fedsa_averages_a_and_returns_no_b():
    states = clients(seed=11)
    agg = lm.fedsa_aggregate(states, WEIGHTS)
    assert not any(".lora_B." in k for k in agg)
    mean = lm.weighted_mean(states, WEIGHTS)
    for layer in LAYERS:
        np.testing.assert_allclose(agg[a_key(layer)], mean[a_key(layer)])
    np.testing.assert_allclose(agg["head.1.running_mean"], mean["head.1.running_mean"])


def test_hetlora_pads_weights_by_norm_and_truncates():
    ranks = (2, 8, 4)
    weights = WEIGHTS[:3]
    states = clients(seed=12, ranks=ranks)
    agg = lm.hetlora_aggregate(states, weights, max_rank=8)
    layer = LAYERS[1]
    assert agg[a_key(layer)].shape == (8, 12) and agg[b_key(layer)].shape == (20, 8)
    # by hand: B_k rescaled to the max-rank scale, weights p_k ||B'_k A_k||_F normalised
    p = p_of(weights)
    pads, norms = [], []
    for r, s in zip(ranks, states):
        A = np.zeros((8, 12))
        B = np.zeros((20, 8))
        A[:r], B[:, :r] = s[a_key(layer)], s[b_key(layer)] * (8 / r)
        pads.append((A, B))
        norms.append(np.linalg.norm(B @ A))
    w = p * np.array(norms) / (p * np.array(norms)).sum()
    np.testing.assert_allclose(agg[a_key(layer)], sum(wk * A for wk, (A, _) in zip(w, pads)), atol=1e-12)
    np.testing.assert_allclose(agg[b_key(layer)], sum(wk * B for wk, (_, B) in zip(w, pads)), atol=1e-12)
    # others by example weight only
    np.testing.assert_allclose(agg["head.0.weight"], sum(pk * s["head.0.weight"] for pk, s in zip(p, states)),
                               rtol=1e-6)
    # a rank-2 client's share: shapes, and the same effective update at its own scale alpha / 2
    small = lm.hetlora_truncate(agg, 2)
    assert small[a_key(layer)].shape == (2, 12) and small[b_key(layer)].shape == (20, 2)
    np.testing.assert_allclose(16 / 2 * small[b_key(layer)] @ small[a_key(layer)],
                               16 / 8 * agg[b_key(layer)][:, :2] @ agg[a_key(layer)][:2], atol=1e-10)
    per_layer = lm.hetlora_truncate(agg, {LAYERS[0]: 1, LAYERS[1]: 4})
    assert lm.adapter_ranks(per_layer) == {LAYERS[0]: 1, LAYERS[1]: 4}
    with pytest.raises(ValueError, match="cannot truncate"):
        lm.hetlora_truncate(agg, 9)
    with pytest.raises(ValueError, match="exceeds max_rank"):
        lm.hetlora_aggregate(states, weights, max_rank=4)


def test_hetlora_falls_back_to_example_weights_when_every_product_is_zero():
    states = clients(seed=13, ranks=(2, 4))
    for s in states:
        for layer in LAYERS:
            s[b_key(layer)] = np.zeros_like(s[b_key(layer)])
    agg = lm.hetlora_aggregate(states, [1, 3], max_rank=4)
    expected = 0.25 * np.pad(states[0][a_key(LAYERS[0])], ((0, 2), (0, 0))) + 0.75 * states[1][a_key(LAYERS[0])]
    np.testing.assert_allclose(agg[a_key(LAYERS[0])], expected, rtol=1e-6)


def test_check_update_names_every_problem():
    good = clients(seed=14)[0]
    ref = {k: np.shape(v) for k, v in good.items()}
    assert lm.check_update(good, ref) == []

    nan = {**good, "head.0.weight": np.full((6, 12), np.nan, np.float32)}
    assert lm.check_update(nan, ref) == ["head.0.weight: 72 NaN and 0 Inf value(s)"]
    inf = dict(good)
    inf[b_key(LAYERS[0])] = good[b_key(LAYERS[0])].copy()
    inf[b_key(LAYERS[0])][0, 0] = np.inf
    assert lm.check_update(inf, ref) == [f"{b_key(LAYERS[0])}: 0 NaN and 1 Inf value(s)"]
    shape = {**good, "head.0.weight": np.zeros((6, 13), np.float32)}
    assert lm.check_update(shape, ref) == ["head.0.weight: shape (6, 13), expected (6, 12)"]
    missing = {k: v for k, v in good.items() if k != "head.1.running_mean"}
    assert lm.check_update(missing, ref) == ["missing 1 tensor(s): head.1.running_mean"]
    assert lm.check_update(missing, ref, optional_keys={"head.1.running_mean"}) == []
    extra = {**good, "encoder.norm.weight": np.ones(12, np.float32)}
    assert lm.check_update(extra, ref) == ["unexpected 1 tensor(s): encoder.norm.weight"]
    text = {**good, "head.0.weight": np.array(["a"])}
    assert lm.check_update(text, ref) == ["head.0.weight: non-numeric dtype <U1"]


def test_check_update_with_heterogeneous_ranks():
    ref = {k: np.shape(v) for k, v in clients(ranks=(8,))[0].items()}
    rank2 = clients(seed=15, ranks=(2,))[0]
    assert lm.check_update(rank2, ref) != []  # fixed-rank strategies refuse it
    assert lm.check_update(rank2, ref, any_rank=True, max_rank=8) == []
    too_big = clients(seed=16, ranks=(16,))[0]
    assert any("rank 16 outside 1..8" in r for r in lm.check_update(too_big, ref, any_rank=True, max_rank=8))
    wrong_in = {**rank2, a_key(LAYERS[0]): np.zeros((2, 5), np.float32)}
    assert any("up to the rank" in r for r in lm.check_update(wrong_in, ref, any_rank=True))
    mismatch = {**rank2, b_key(LAYERS[0]): np.zeros((12, 3), np.float32)}
    assert f"{LAYERS[0]}: lora_A has rank 2 but lora_B 3" in lm.check_update(mismatch, ref, any_rank=True)
