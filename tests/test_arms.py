"""The like-for-like arms (FLConfig.arm): centralised and local-only differ from the federated
run in federation only."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from simulations.config import FLConfig
from simulations.run import run_inprocess
from simulations.task import client_data, federation

SMALL = FLConfig(data="synthetic", partition="subject", synthetic_domains=2, synthetic_subjects=3,
                 server_test_fraction=0.34, pretrain_epochs=1, rounds=2, rank=4, lora_alpha=8.0)


def test_centralised_client_holds_exactly_the_union_of_the_clients_training_windows():
    fed, pooled = federation(SMALL), federation(replace(SMALL, arm="centralised"))
    assert len(fed.parts) == 4 and pooled.client_names == ["centralised"]
    union = np.sort(np.concatenate([train for train, _ in fed.splits]))
    np.testing.assert_array_equal(np.sort(pooled.splits[0][0]), union)
    # the same normalisation statistics and the same server test windows
    np.testing.assert_array_equal(pooled.norm.apply(pooled.server_test).x, fed.norm.apply(fed.server_test).x)
    central = client_data(replace(SMALL, arm="centralised"), 0)
    assert len(central.train_y) == sum(len(client_data(SMALL, pid).train_y) for pid in range(4))


def test_arm_is_checked():
    from fedhar.errors import FedharError

    with pytest.raises(FedharError, match="unknown arm .pooled."):
        FLConfig(arm="pooled")


@pytest.mark.slow
def test_with_one_client_federated_and_local_only_are_the_same_training(tmp_path):
    """One client: FedAvg sends the client its own update back, so the federated run is the
    local-only run; equal server-test numbers show the arms share data, seeds and passes."""
    one = replace(SMALL, partition="dataset", synthetic_domains=1, synthetic_subjects=4, server_test_fraction=0.25)
    assert len(federation(one).parts) == 1
    fed_dir = run_inprocess(replace(one, out_dir=str(tmp_path / "fed")), engine="inline")
    run_inprocess(replace(one, arm="local", out_dir=str(tmp_path / "local")), engine="inline")
    server = pd.read_csv(fed_dir / "clients.csv")
    server = server[(server["phase"] == "server") & (server["round"] == one.rounds)]
    local = pd.read_csv(tmp_path / "local" / "local.csv")
    local = local[local["phase"] == "server"]
    assert len(server) == len(local) == 1
    assert local["accuracy"].iloc[0] == pytest.approx(server["accuracy"].iloc[0], abs=1e-12)
    assert local["macro_f1"].iloc[0] == pytest.approx(server["macro_f1"].iloc[0], abs=1e-12)


@pytest.mark.slow
def test_each_local_model_is_scored_on_every_test_window_of_the_label_space(tmp_path):
    """Local-only on the federation's task: every client's model on all the server's test sets
    (each dataset's), so that local vs federated asks the same question; its own dataset apart.
    config.json records the code and threads the reports check before pairing."""
    import json

    from fedhar.arms_report import final_scores, local_scores

    two = replace(SMALL, partition="dataset", synthetic_domains=2, synthetic_subjects=4, server_test_fraction=0.25,
                  arm="local", out_dir=str(tmp_path / "local"))
    run_inprocess(two, engine="inline")
    meta = json.loads((tmp_path / "local" / "config.json").read_text())
    assert meta["code"] and meta["threads"] >= 1
    rows = pd.read_csv(tmp_path / "local" / "local.csv")
    server = rows[rows["phase"] == "server"]
    sets = {"server:synthetic-d0", "server:synthetic-d1"}
    assert {c: set(g["set"]) for c, g in server.groupby("client")} == {"synthetic-d0": sets, "synthetic-d1": sets}
    every, own = local_scores(server), local_scores(server, own_only=True)
    assert final_scores(tmp_path / "local")["accuracy"] == pytest.approx(every["accuracy"])
    mine = server[server["set"] == "server:" + server["client"]]
    assert own["accuracy"] == pytest.approx(mine.groupby("client")["accuracy"].mean().mean())
