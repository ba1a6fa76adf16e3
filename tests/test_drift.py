"""Client drift and aggregation inexactness (fedhar.drift) and their tables (strategies.recording)."""

import csv
import math

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedhar.drift import DRIFT_COLUMNS, INEXACTNESS_COLUMNS, client_drift, drift_tables, layer_inexactness
from strategies import RoundLog, recording
from strategies import lora_math as lm
from strategies.lora_strategies import FedIT, HetLoRA
from tests.test_lora_math import LAYERS, a_key, b_key
from tests.test_lora_strategies import FakeGrid, reply, server_identity, states  # noqa: F401 (fixture)

L = "encoder.blocks.0.attn.q"


def adapters(A=None, B=None, layer=L, **extra):
    """A state with ``layer``'s A and/or B (given as nested lists), plus ``extra`` tensors."""
    out = {}
    if A is not None:
        out[a_key(layer)] = np.array(A, dtype=np.float32)
    if B is not None:
        out[b_key(layer)] = np.array(B, dtype=np.float32)
    return {**out, **{k: np.asarray(v, dtype=np.float32) for k, v in extra.items()}}


def by(rows, part):
    return {r["k"]: r for r in rows if r["part"] == part}


def test_rank_one_clients_with_hand_computed_drift_and_cosine():
    # global B = 0: delta_k = B_k A_k; client 0 moves 3 e1 e1^T, client 1 moves -e1 e1^T
    sent = adapters(A=[[1, 0]], B=[[0], [0]])
    clients = [adapters(A=[[1, 0]], B=[[3], [0]]), adapters(A=[[1, 0]], B=[[-1], [0]])]
    rows = client_drift(sent, clients, [50, 50])
    ba = by(rows, "BA")  # mean delta = e1 e1^T, norm 1
    assert ba[0]["update_norm"] == 3 and ba[1]["update_norm"] == 1
    assert ba[0]["drift_norm"] == ba[1]["drift_norm"] == 2 and ba[0]["rel_drift"] == ba[1]["rel_drift"] == 2
    assert ba[0]["cosine"] == 1 and ba[1]["cosine"] == -1
    b = by(rows, "B")  # the same numbers on B alone (A did not move)
    assert [(b[k]["update_norm"], b[k]["drift_norm"], b[k]["cosine"]) for k in (0, 1)] == [(3, 2, 1), (1, 2, -1)]
    a = by(rows, "A")  # A did not move: all zero, cosine undefined (nan), never faked
    assert all(a[k]["update_norm"] == a[k]["drift_norm"] == a[k]["rel_drift"] == 0 for k in (0, 1))
    assert all(math.isnan(a[k]["cosine"]) for k in (0, 1))
    # unequal weights: mean = 0.25 * 3 + 0.75 * (-1) = 0 -> relative drift infinite, cosine nan
    rows = by(client_drift(sent, clients, [1, 3]), "BA")
    assert rows[0]["drift_norm"] == 3 and rows[1]["drift_norm"] == 1
    assert rows[0]["rel_drift"] == math.inf and math.isnan(rows[0]["cosine"])
    # all identical: no drift, cosine 1; identical A -> FedIT exact
    rows = by(client_drift(sent, [clients[0]] * 3, [5, 1, 9]), "BA")
    assert all(r["drift_norm"] == pytest.approx(0, abs=1e-15) for r in rows.values())
    assert all(r["cosine"] == pytest.approx(1) for r in rows.values())
    assert layer_inexactness(clients, [50, 50]) == [{"layer": L, "clients": 2, "inexactness": 0.0}]


def test_rank_scaling_divides_the_product_by_the_rank():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(4, 6)), rng.normal(size=(5, 4))
    sent = adapters(A=A, B=np.zeros((5, 4)))
    rows = by(client_drift(sent, [adapters(A=A, B=B)], [1]), "BA")
    assert rows[0]["update_norm"] == pytest.approx(np.linalg.norm(B @ A) / 4)
    assert rows[0]["drift_norm"] == 0 and rows[0]["rel_drift"] == 0 and rows[0]["cosine"] == pytest.approx(1)


def test_inexactness_of_two_clients_is_the_pairwise_formula():
    # hand: A_1 = e1^T, A_2 = e2^T, B_1 = e1, B_2 = e2, p = 1/2: ideal = I/2, mean(B) mean(A) = 1/4,
    # error = 1/4 (B_1 - B_2)(A_1 - A_2), ||error|| = 1/2, ||ideal|| = 1/sqrt(2)
    clients = [adapters(A=[[1, 0]], B=[[1], [0]]), adapters(A=[[0, 1]], B=[[0], [1]])]
    [row] = layer_inexactness(clients, [7, 7])
    assert row["inexactness"] == pytest.approx(1 / math.sqrt(2), rel=1e-12) and row["clients"] == 2
    # random rank 3, unequal weights: the closed form sum_{k<j} p_k p_j (B_k - B_j)(A_k - A_j)
    rng = np.random.default_rng(1)
    clients = [adapters(A=rng.normal(size=(3, 8)), B=rng.normal(size=(5, 3))) for _ in range(2)]
    p = np.array([0.25, 0.75])
    (A1, B1), (A2, B2) = [(c[a_key(L)].astype(float), c[b_key(L)].astype(float)) for c in clients]
    ideal = p[0] * B1 @ A1 + p[1] * B2 @ A2
    expected = np.linalg.norm(p[0] * p[1] * (B1 - B2) @ (A1 - A2)) / np.linalg.norm(ideal)
    [row] = layer_inexactness(clients, [1, 3])
    assert row["inexactness"] == pytest.approx(expected, rel=1e-10)
    assert row["inexactness"] == pytest.approx(lm.inexactness(clients, [1, 3], L), rel=1e-10)
    # identical clients: exactly 0
    [row] = layer_inexactness([clients[0], clients[0]], [2, 2])
    assert row["inexactness"] == 0.0


def test_many_clients_match_a_direct_computation():
    counts = [120, 35, 300, 9, 60]
    clients = states(seed=3, ranks=(4,) * 5)
    sent = states(seed=4, ranks=(4,))[0]
    p = np.asarray(counts, float) / sum(counts)
    rows = client_drift(sent, clients, counts)
    for layer in LAYERS:
        def product(s, layer=layer):
            return s[b_key(layer)].astype(float) @ s[a_key(layer)].astype(float) / 4

        for part, delta in (("BA", lambda s, product=product: product(s) - product(sent)),
                            ("A", lambda s, layer=layer: s[a_key(layer)].astype(float) - sent[a_key(layer)]),
                            ("B", lambda s, layer=layer: s[b_key(layer)].astype(float) - sent[b_key(layer)])):
            deltas = [delta(s) for s in clients]
            mean = sum(pk * d for pk, d in zip(p, deltas))
            got = {r["k"]: r for r in rows if r["layer"] == layer and r["part"] == part}
            assert sorted(got) == list(range(5))
            for k, d in enumerate(deltas):
                assert got[k]["update_norm"] == pytest.approx(np.linalg.norm(d), rel=1e-10)
                assert got[k]["drift_norm"] == pytest.approx(np.linalg.norm(d - mean), rel=1e-10)
                assert got[k]["rel_drift"] == pytest.approx(np.linalg.norm(d - mean) / np.linalg.norm(mean), rel=1e-10)
                cos = np.sum(d * mean) / np.linalg.norm(d) / np.linalg.norm(mean)
                assert got[k]["cosine"] == pytest.approx(cos, rel=1e-9, abs=1e-12)
    inexact = {r["layer"]: r["inexactness"] for r in layer_inexactness(clients, counts)}
    assert inexact == {layer: pytest.approx(lm.inexactness(clients, counts, layer), rel=1e-10) for layer in LAYERS}


def test_heterogeneous_ranks_give_product_rows_only():
    rng = np.random.default_rng(5)
    clients = [adapters(A=rng.normal(size=(r, 6)), B=rng.normal(size=(4, r))) for r in (2, 4)]
    sent = adapters(A=rng.normal(size=(4, 6)), B=rng.normal(size=(4, 4)))
    rows = client_drift(sent, clients, [1, 1])
    assert {r["part"] for r in rows} == {"BA"} and len(rows) == 2
    start = sent[b_key(L)].astype(float) @ sent[a_key(L)] / 4
    deltas = [c[b_key(L)].astype(float) @ c[a_key(L)] / r - start for c, r in zip(clients, (2, 4))]
    mean = (deltas[0] + deltas[1]) / 2
    for r in rows:
        assert r["update_norm"] == pytest.approx(np.linalg.norm(deltas[r["k"]]), rel=1e-10)
        assert r["drift_norm"] == pytest.approx(np.linalg.norm(deltas[r["k"]] - mean), rel=1e-10)
    assert layer_inexactness(clients, [1, 1]) == []  # ranks differ: no inexactness row
    # HetLoRA-like: each client was sent the global truncated to its own rank; A/B of equal shape
    # per client but not across clients -> still no part rows; products against each one's start
    per_client = [lm.hetlora_truncate(sent, 2), sent]
    rows = client_drift(per_client, clients, [1, 1])
    assert {r["part"] for r in rows} == {"BA"}
    small = per_client[0][b_key(L)] @ per_client[0][a_key(L)] / 2
    assert rows[0]["update_norm"] == pytest.approx(np.linalg.norm(clients[0][b_key(L)].astype(float)
                                                                  @ clients[0][a_key(L)] / 2 - small), rel=1e-10)


def test_a_factor_left_at_home_is_taken_as_sent_and_gets_no_part_row():
    rng = np.random.default_rng(6)
    A_g, B_g = rng.normal(size=(2, 6)), rng.normal(size=(3, 2))
    sent = adapters(A=A_g, B=B_g)
    # FedSA: the clients send A only (B stays local): BA = B_g (A_k - A_g) / r, an A row, no B row
    fedsa = [adapters(A=A_g + rng.normal(size=(2, 6))) for _ in range(2)]
    rows = client_drift(sent, fedsa, [3, 1])
    assert sorted((r["part"], r["k"]) for r in rows) == [("A", 0), ("A", 1), ("BA", 0), ("BA", 1)]
    ba = by(rows, "BA")
    for k, c in enumerate(fedsa):
        expected = np.linalg.norm(B_g @ (c[a_key(L)].astype(float) - A_g.astype(np.float32)) / 2)
        assert ba[k]["update_norm"] == pytest.approx(expected, rel=1e-6)
    assert layer_inexactness(fedsa, [3, 1]) == []  # B unknown: no number
    # FFA: the clients send B only (A frozen, never sent back): BA = (B_k - B_g) A_g / r, a B row
    ffa = [adapters(B=B_g + rng.normal(size=(3, 2))) for _ in range(2)]
    rows = client_drift(sent, ffa, [1, 1])
    assert sorted((r["part"], r["k"]) for r in rows) == [("B", 0), ("B", 1), ("BA", 0), ("BA", 1)]
    # a factor neither sent nor returned (FedSA's B in later rounds, FFA's A): no BA row at all
    assert {r["part"] for r in client_drift(adapters(A=A_g), fedsa, [1, 1])} == {"A"}
    assert {r["part"] for r in client_drift(adapters(B=B_g), ffa, [1, 1])} == {"B"}


def test_fresh_adapters_start_from_zero_and_other_tensors_are_ignored():
    rng = np.random.default_rng(7)
    clients = [adapters(A=rng.normal(size=(r, 6)), B=rng.normal(size=(4, r))) for r in (1, 3)]
    dense = {f"{L}.base_delta": np.ones((4, 6)), "head.0.weight": np.ones((2, 2))}
    assert client_drift(dense, clients, [1, 1]) == []  # start unknown: nothing
    rows = client_drift(dense, [{**c, "head.0.weight": np.zeros((2, 2))} for c in clients], [1, 1],
                        fresh_adapters=True)
    assert [(r["part"], r["layer"]) for r in rows] == [("BA", L)] * 2
    for r, c, rank in zip(rows, clients, (1, 3)):
        assert r["update_norm"] == pytest.approx(np.linalg.norm(c[b_key(L)].astype(float) @ c[a_key(L)]) / rank)


def test_drift_tables_have_the_documented_columns():
    sent = adapters(A=[[1, 0]], B=[[0], [0]])
    clients = [adapters(A=[[1, 0]], B=[[3], [0]]), adapters(A=[[1, 0]], B=[[-1], [0]])]
    drift, inexact = drift_tables(4, sent, clients, [1, 1], partition_ids=[7, 2], client_names=["s7", "s2"])
    assert all(tuple(r) == DRIFT_COLUMNS for r in drift) and len(drift) == 6
    assert all(tuple(r) == INEXACTNESS_COLUMNS for r in inexact) and len(inexact) == 1
    assert {(r["round"], r["partition_id"], r["client"]) for r in drift} == {(4, 7, "s7"), (4, 2, "s2")}
    drift, _ = drift_tables(1, sent, clients, [1, 1])
    assert {(r["partition_id"], r["client"]) for r in drift} == {(None, None)}


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_recording_writes_drift_tables_for_accepted_replies_and_a_resume_repeats_nothing(
        tmp_path, server_identity):  # noqa: F811
    clients = states(seed=8)
    initial = ArrayRecord({k: Array(v) for k, v in states(seed=9)[0].items()})
    log = RoundLog(tmp_path / "clients.csv", ["alice", "bob", "carol", "dave"])
    log.partition_of = {1: 0, 2: 1, 3: 2}
    strategy = recording(FedIT)(log=log, min_train_nodes=3, min_available_nodes=3)
    bad = {**clients[2], "head.0.weight": np.full((6, 12), np.nan, np.float32)}
    for server_round in (1, 2):
        strategy.configure_train(server_round, initial, ConfigRecord(), FakeGrid())
        replies = [reply(clients[0], 120, 1), reply(clients[1], 35, 2), reply(bad, 300, 3)]
        strategy.aggregate_train(server_round, replies)
        assert strategy._drift_sent == {}  # not kept for the checkpoint
    assert list(strategy.last_rejected) == [3]
    drift, inexact = _read(tmp_path / "drift.csv"), _read(tmp_path / "inexactness.csv")
    assert list(drift[0]) == list(DRIFT_COLUMNS) and list(inexact[0]) == list(INEXACTNESS_COLUMNS)
    # 2 rounds x 2 accepted clients x 2 layers x 3 parts; the rejected reply has no row
    assert len(drift) == 24 and {r["client"] for r in drift} == {"alice", "bob"}
    assert {r["partition_id"] for r in drift} == {"0", "1"}
    assert len(inexact) == 4 and {r["clients"] for r in inexact} == {"2"}
    sent = {k: v.numpy() for k, v in initial.items()}
    expected, _ = drift_tables(2, sent, clients[:2], [120, 35])
    got = [r for r in drift if r["round"] == "2"]
    for row, want in zip(got, expected):
        assert row["layer"] == want["layer"] and row["part"] == want["part"]
        assert float(row["drift_norm"]) == pytest.approx(want["drift_norm"], rel=1e-12)

    # a new process resumes after round 1 (round 2 was written, its checkpoint never was)
    log2 = RoundLog(tmp_path / "clients.csv", ["alice", "bob", "carol", "dave"])
    log2.partition_of = log.partition_of
    strategy2 = recording(FedIT)(log=log2, min_train_nodes=3, min_available_nodes=3)
    strategy2.configure_train(2, initial, ConfigRecord(), FakeGrid())
    assert len(_read(tmp_path / "drift.csv")) == 12  # round 2 dropped, round 1 kept
    strategy2.aggregate_train(2, [reply(clients[0], 120, 1), reply(clients[1], 35, 2), reply(bad, 300, 3)])
    drift = pd.read_csv(tmp_path / "drift.csv")
    assert len(drift) == 24 and not drift.duplicated(["round", "client", "layer", "part"]).any()
    assert set(drift["client"]) == {"alice", "bob"}
    assert len(pd.read_csv(tmp_path / "inexactness.csv")) == 4
    # a fresh run (round 1) in the same directory starts the tables over
    RoundLog(tmp_path / "clients.csv").start_tables({"drift.csv": DRIFT_COLUMNS}, 1)
    assert not (tmp_path / "drift.csv").exists()


def test_recording_uses_what_hetlora_sent_each_node(tmp_path, server_identity):  # noqa: F811
    ranks = (2, 8, 4)
    clients = states(seed=11, ranks=ranks)
    log = RoundLog(tmp_path / "clients.csv")
    strategy = recording(HetLoRA)(log=log, min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3)
    initial = ArrayRecord({k: Array(v) for k, v in states(seed=0, ranks=(8,))[0].items()})
    strategy.configure_train(1, initial, ConfigRecord(), FakeGrid())
    arrays, _ = strategy.aggregate_train(1, [reply(s, n, i + 1) for i, (s, n) in enumerate(zip(clients, (5, 6, 7)))])
    strategy.configure_train(2, arrays, ConfigRecord(), FakeGrid())
    more = states(seed=12, ranks=ranks)
    strategy.aggregate_train(2, [reply(s, n, i + 1) for i, (s, n) in enumerate(zip(more, (5, 6, 7)))])
    drift = pd.read_csv(tmp_path / "drift.csv")
    assert set(drift["part"]) == {"BA"} and len(drift) == 2 * 3 * 2  # rounds x clients x layers
    assert not (tmp_path / "inexactness.csv").exists()  # ranks differ
    # round 2: node 1 (rank 2) started from the global truncated to rank 2
    glob = {k: v.numpy() for k, v in arrays.items()}
    start = lm.hetlora_truncate(glob, 2)
    layer = LAYERS[0]
    expected = np.linalg.norm(more[0][b_key(layer)].astype(float) @ more[0][a_key(layer)] / 2
                              - start[b_key(layer)] @ start[a_key(layer)] / 2)
    row = drift[(drift["round"] == 2) & (drift["layer"] == layer)].iloc[0]
    assert row["update_norm"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_a_two_round_run_writes_drift_and_inexactness_tables(tmp_path, monkeypatch):
    from simulations.run import run_inprocess
    from tests.test_fl_strategies import tiny

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    out = run_inprocess(tiny(tmp_path / "run", strategy="fedavg"), engine="inline")
    drift, inexact = pd.read_csv(out / "drift.csv"), pd.read_csv(out / "inexactness.csv")
    assert tuple(drift.columns) == DRIFT_COLUMNS and tuple(inexact.columns) == INEXACTNESS_COLUMNS
    assert set(drift["round"]) == {1, 2} and set(drift["part"]) == {"BA", "A", "B"}
    assert set(drift["partition_id"]) == {0, 1, 2} and drift["client"].notna().all()
    n_layers = drift["layer"].nunique()
    assert n_layers > 0 and len(drift) == 2 * 3 * n_layers * 3
    assert len(inexact) == 2 * n_layers and (inexact["clients"] == 3).all()
    assert inexact["inexactness"].between(0, 10).all()
    ba = drift[drift["part"] == "BA"]
    assert (ba["update_norm"] > 0).all() and ba["cosine"].between(-1, 1).all()
