"""Server-side evaluation, normalisation and local heads of the federated runs.

- the server's test subjects are exactly the centralised LODO baseline's;
- normalise = dataset / client statistics;
- head = auto -> local when label sets differ: heads stay home, fewer bytes travel;
- held-out data and the server's test split are evaluated every round (clients.csv rows).
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fedhar.data import LabelSpace, WindowSet
from fedhar.data.labels import ACTIVITY_ID
from fedhar.data.splits import Normaliser, subject_split
from fedhar.errors import FedharError
from fedhar.lodo import LodoPlan, load_study, split_for
from fedhar.model import classification_metrics
from simulations import task
from simulations.config import FLConfig
from simulations.server_app import summarise


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def windows(subjects: dict[str, int], per_subject: int = 4, seed: int = 0) -> WindowSet:
    """Random windows: per dataset, subjects 1..n with ``per_subject`` windows each."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, n in subjects.items():
        subject = np.repeat(np.arange(1, n + 1), per_subject)
        y = np.tile([ACTIVITY_ID["walking"], ACTIVITY_ID["sitting"]], len(subject) // 2 + 1)[: len(subject)]
        x = rng.normal(size=(len(subject), 6, 8)).astype(np.float32)
        parts.append(WindowSet(x, y, subject, np.array([name] * len(subject))))
    return WindowSet.concat(parts)


def lodo_test_subjects(ws: WindowSet, name: str, seed: int, train_fraction: float = 0.7) -> set:
    part = ws.subset(ws.dataset == name)
    _, test, _ = split_for(part, name, {"train_fraction": train_fraction, "seed": seed}, LodoPlan(datasets=(name,)))
    return set(np.unique(test.subject).tolist())


# --- 1. the server's test split is LODO's ---------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_server_test_subjects_are_lodos(seed):
    # 15 subjects (RealWorld): LODO holds out round((1 - 0.7) * 15) = 5, but round(0.3 * 15) = 4
    ws = windows({"realworld": 15, "hhar": 9, "uci-har": 30})
    held = task.server_test_mask(ws, 0.3, seed)
    for name in ws.datasets():
        in_ds = ws.dataset == name
        assert set(np.unique(ws.subject[held & in_ds]).tolist()) == lodo_test_subjects(ws, name, seed)
        # subject-disjoint: every subject entirely on one side
        for s in np.unique(ws.subject[in_ds]):
            assert len(set(held[in_ds & (ws.subject == s)])) == 1
    assert (held & (ws.dataset == "realworld")).sum() == 5 * 4
    # the naive call would not match LODO here
    _, naive = subject_split(ws.subset(ws.dataset == "realworld"), 0.3, seed)
    assert len(np.unique(naive.subject)) == 4


def test_federation_keeps_lodos_test_subjects_on_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    cfg = FLConfig(synthetic_domains=2, synthetic_subjects=5, server_test_fraction=0.3, seed=3)
    fed = task.federation(cfg)
    study = load_study(LodoPlan(datasets=("synthetic",), synthetic_domains=2, synthetic_subjects=5, synthetic_seed=3))
    assert sorted(study) == fed.server_test.datasets() == ["synthetic-d0", "synthetic-d1"]
    for name, ws in study.items():
        server = set(np.unique(fed.server_test.subject[fed.server_test.dataset == name]).tolist())
        assert server == lodo_test_subjects(ws, name, seed=3) and len(server) == 2
        clients = set(np.unique(fed.windows.subject[fed.windows.dataset == name]).tolist())
        assert clients.isdisjoint(server) and len(clients) == 3  # clients: the training subjects only
        assert np.isin(fed.windows.subject[fed.windows.dataset == name], list(clients)).all()
    assert len(fed.windows) + len(fed.server_test) == sum(len(ws) for ws in study.values())
    # every client window comes from the clients' pool, and nothing is lost
    covered = np.concatenate([np.concatenate(s) for s in fed.splits])
    assert sorted(covered.tolist()) == list(range(len(fed.windows)))


# --- 2. normalisation -----------------------------------------------------------------


def test_dataset_normalisation_uses_the_datasets_training_windows(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    base = dict(synthetic_domains=2, synthetic_subjects=4, partition="subject", server_test_fraction=0.3)
    by_dataset, by_client = FLConfig(**base), FLConfig(**base, normalise="client")
    fed = task.federation(by_dataset)
    train = fed.windows.subset(np.concatenate([t for t, _ in fed.splits]))
    expected = Normaliser.fit(train)
    for name in fed.windows.datasets():
        np.testing.assert_array_equal(fed.norm.mean[name], expected.mean[name])
        assert not np.isin(train.subject[train.dataset == name],
                           fed.server_test.subject[fed.server_test.dataset == name]).any()
    pooled = {name: [] for name in fed.windows.datasets()}
    for pid in range(len(fed.parts)):
        d = task.client_data(by_dataset, pid)
        pooled[fed.windows.dataset[fed.splits[pid][0][0]]].append(d.train_x)
        c = task.client_data(by_client, pid)
        np.testing.assert_allclose(c.train_x.mean(axis=(0, 2)), 0, atol=1e-4)  # its own statistics
        np.testing.assert_allclose(c.train_x.std(axis=(0, 2)), 1, atol=1e-3)
        assert not np.allclose(d.train_x, c.train_x)
    for xs in pooled.values():  # dataset statistics: zero mean, unit std over all its clients
        x = np.concatenate(xs)
        np.testing.assert_allclose(x.mean(axis=(0, 2)), 0, atol=1e-4)
        np.testing.assert_allclose(x.std(axis=(0, 2)), 1, atol=1e-3)
        assert np.abs(xs[0].mean(axis=(0, 2))).max() > 1e-3  # one client alone is not centred


# --- 3. local heads -------------------------------------------------------------------


def test_windows_outside_a_heads_labels_are_errors_not_dropped():
    labels = LabelSpace(("walking", "sitting"))
    ids = np.array([ACTIVITY_ID[a] for a in ["walking", "lying", "sitting", "running", "lying"]])
    y, outside = task.encode_open(labels, ids, n_outputs=2)
    assert outside == 3 and list(y[[0, 2]]) == [0, 1] and (y[[1, 3, 4]] >= 2).all()
    assert y[1] == y[4] != y[3]  # one index per unseen class
    m = classification_metrics(y, np.array([0, 0, 1, 1, 1]))
    assert m["n"] == 5 and m["accuracy"] == pytest.approx(2 / 5)
    # a one-class client still gets a two-output head; the spare output is nobody's label
    assert task.head_size(LabelSpace(("walking",))) == 2
    y1, out1 = task.encode_open(LabelSpace(("walking",)), ids[:2], n_outputs=2)
    assert list(y1) == [0, 2] and out1 == 1


def test_auto_head_is_local_when_clients_miss_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    skewed = FLConfig(synthetic_domains=3, synthetic_subjects=3, partition="dirichlet", num_clients=3,
                      dirichlet_alpha=0.1)
    fed = task.federation(skewed)
    assert fed.head == "local"
    assert any(set(c.names) < set(fed.labels.names) for c in fed.client_labels)
    for pid, own in enumerate(fed.client_labels):
        d = task.client_data(skewed, pid)
        assert d.labels == own and d.n_classes == max(2, own.size)
        assert set(d.train_y.tolist()) == set(range(own.size))
        assert len(d.test_y) == len(fed.splits[pid][1])  # nothing dropped
        assert d.out_of_space == int((d.test_y >= d.n_classes).sum())
    assert task.federation(FLConfig(synthetic_domains=3, synthetic_subjects=3)).head == "shared"
    assert task.federation(FLConfig(synthetic_domains=3, synthetic_subjects=3, head="local")).head == "local"


def test_a_local_head_does_not_change_the_shared_adapters(tmp_path):
    from fedhar.model import MaskedAutoencoder, save_mae, trainable_state_dict
    from fedhar.model.mae import MAEConfig

    path = tmp_path / "mae.safetensors"
    save_mae(MaskedAutoencoder(MAEConfig(depth=1)), path)
    cfg = FLConfig(strategy="ffa")  # FFA's frozen A must be the same on every side
    server = task.build_model(cfg, 6, path)
    client = task.build_model(cfg, 6, path, pid=1, head_classes=3)
    assert client.head[-1].out_features == 3 and all(p.requires_grad for p in client.head.parameters())
    a_server = {n: p for n, p in server.named_parameters() if ".lora_A." in n}
    a_client = dict(client.named_parameters())
    assert a_server and all(torch.equal(p, a_client[n]) for n, p in a_server.items())
    heads = {k: v.shape for k, v in trainable_state_dict(client).items() if task.is_head_key(k)}
    assert heads["head.4.weight"] == (3, 128) and "head.1.running_mean" in heads


# --- 5. configuration -----------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    dict(server_test_fraction=1.0), dict(server_test_fraction=-0.1), dict(normalise="global"),
    dict(head="personal"), dict(probe_epochs=0), dict(server_eval_every=0),
    dict(data="hhar", heldout_data="hhar"), dict(data="hhar", pretrain_data="pamap2", heldout_data="pamap2"),
    dict(data="hapt", heldout_data="uci-har"), dict(heldout_data="hhar+hhar"),
])
def test_bad_evaluation_settings_are_refused(bad):
    with pytest.raises(FedharError):
        FLConfig(**bad)


def test_evaluation_settings_round_trip_the_run_config():
    cfg = FLConfig(data="hhar", heldout_data="synthetic+pamap2", server_test_fraction=0.3, head="local",
                   normalise="client", probe_epochs=2, server_eval_every=3, rounds=7)
    assert FLConfig.from_run_config(cfg.to_run_config()) == cfg
    assert cfg.heldout_datasets == ["synthetic", "pamap2"] and cfg.heldout_test_fraction == 0.3
    assert [r for r in range(1, 8) if cfg.server_evaluates(r)] == [3, 6, 7]
    assert FLConfig(heldout_data="synthetic").heldout_datasets == ["synthetic"]  # a separate draw: allowed


def test_summary_weights_server_rows_by_examples(tmp_path):
    rows = [
        {"round": 1, "phase": "train", "status": "ok", "train_loss": 1.0, "num_examples": 10,
         "bytes_sent": 1, "bytes_received": 1},
        {"round": 1, "phase": "evaluate", "status": "ok", "accuracy": 0.5, "macro_f1": 0.5, "num_examples": 10},
        {"round": 1, "phase": "server", "client": "server:a", "status": "ok", "accuracy": 1.0, "macro_f1": 1.0,
         "num_examples": 30},
        {"round": 1, "phase": "server", "client": "server:b", "status": "ok", "accuracy": 0.0, "macro_f1": 0.2,
         "num_examples": 10},
        {"round": 2, "phase": "train", "status": "ok", "train_loss": 0.5, "num_examples": 10,
         "bytes_sent": 1, "bytes_received": 1},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "clients.csv", index=False)
    out = summarise(tmp_path / "clients.csv").set_index("round")
    assert out.loc[1, "server_accuracy"] == pytest.approx(0.75)
    assert out.loc[1, "server_macro_f1"] == pytest.approx(0.8)
    assert np.isnan(out.loc[2, "server_accuracy"]) and out.loc[1, "accuracy"] == 0.5
    assert "heldout_accuracy" not in out  # no held-out data in this run


# --- end to end -----------------------------------------------------------------------


def tiny(out_dir, **changes) -> FLConfig:
    base = dict(synthetic_domains=3, synthetic_subjects=3, pretrain_epochs=1, rounds=2, local_epochs=1,
                batch_size=32, server_test_fraction=0.3, heldout_data="synthetic", out_dir=str(out_dir))
    return FLConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def cache(session_cache):
    return session_cache  # tests/conftest.py


@pytest.mark.slow
def test_local_heads_stay_home_and_the_server_evaluates_every_round(tmp_path, cache, monkeypatch):
    from simulations.run import run_inprocess

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    skew = dict(partition="dirichlet", num_clients=3, dirichlet_alpha=0.1)
    local = run_inprocess(tiny(tmp_path / "local", **skew), engine="inline")
    shared = run_inprocess(tiny(tmp_path / "shared", head="shared", rounds=1, **skew), engine="inline")
    config = json.loads((local / "config.json").read_text())
    assert config["head"] == "local" and config["config"]["head"] == "auto"
    assert any(len(v) < len(config["label_space"]) for v in config["client_labels"].values())
    assert json.loads((shared / "config.json").read_text())["head"] == "shared"
    clients = pd.read_csv(local / "clients.csv")
    train = clients[clients["phase"] == "train"]
    assert (train["status"] == "ok").all() and len(train) == 6
    shared_sent = pd.read_csv(shared / "clients.csv").query("phase == 'train'")["bytes_sent"]
    # the head (Linear 192->128, BatchNorm, Linear 128->6: 103,968 bytes) no longer travels
    assert train["bytes_sent"].max() < shared_sent.min()
    assert (shared_sent.min() - train["bytes_sent"].max()) == 103_968
    assert (train["bytes_received"] == train["bytes_sent"]).all()  # nor does it come down
    evaluate = clients[clients["phase"] == "evaluate"]
    assert (evaluate["status"] == "ok").all() and evaluate["out_of_space"].notna().all()
    # the server: each dataset's LODO test subjects, and the held-out draw, in every round;
    # no global head, so a head-only probe on the global encoder
    server = clients[clients["phase"].isin(["server", "heldout"])]
    assert sorted(set(server["client"])) == ["heldout:synthetic", "server:synthetic-d0", "server:synthetic-d1",
                                              "server:synthetic-d2"]
    assert len(server) == 8 and (server["status"] == "ok").all() and (server["evaluation"] == "probe").all()
    assert server[["accuracy", "macro_f1", "precision", "recall"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (server["num_examples"] > 0).all() and (server["out_of_space"] == 0).all()
    rounds = pd.read_csv(local / "rounds.csv")
    assert rounds[["server_accuracy", "server_macro_f1", "heldout_accuracy", "heldout_macro_f1"]].notna().all().all()
    assert (rounds["server_accuracy"] > 1 / 6).all()  # above chance: the probe learns on the features
    # server_test_fraction held out the LODO subjects: described in config.json
    held = config["server_eval"]["server:synthetic-d0"]
    assert held["evaluation"] == "probe" and len(held["test_subjects"]) == 1


@pytest.mark.slow
def test_a_shared_head_is_evaluated_directly_every_n_rounds(tmp_path, cache, monkeypatch):
    from simulations.run import run_inprocess

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    out = run_inprocess(tiny(tmp_path / "run", rounds=3, server_eval_every=2, strategy="fedex"), engine="inline")
    clients = pd.read_csv(out / "clients.csv")
    server = clients[clients["phase"].isin(["server", "heldout"])]
    assert sorted(set(server["round"])) == [2, 3]  # every 2nd round, and the last
    assert (server["evaluation"] == "direct").all() and (server["out_of_space"] == 0).all()
    assert json.loads((out / "config.json").read_text())["head"] == "shared"
    rounds = pd.read_csv(out / "rounds.csv").set_index("round")
    assert np.isnan(rounds.loc[1, "server_accuracy"]) and rounds.loc[[2, 3], "server_accuracy"].notna().all()
    assert (rounds.loc[[2, 3], "server_accuracy"] > 1 / 6).all()
    for phase in ("server", "heldout"):  # example-weighted over the datasets
        r3 = server[(server["round"] == 3) & (server["phase"] == phase)]
        w = r3["num_examples"]
        assert rounds.loc[3, f"{phase}_accuracy"] == pytest.approx((r3["accuracy"] * w).sum() / w.sum())
