"""rounds.csv from clients.csv / drift.csv / inexactness.csv: the per-round numbers by hand."""

import pandas as pd
import pytest

from simulations.server_app import summarise


def test_round_summary_spread_gap_and_drift(tmp_path):
    pd.DataFrame([
        # round 1: two clients train (local accuracy .9 and .7) then evaluate the global model
        dict(round=1, phase="train", partition_id=0, status="ok", train_loss=1.0, local_accuracy=0.9,
             bytes_sent=10, bytes_received=20),
        dict(round=1, phase="train", partition_id=1, status="ok", train_loss=0.5, local_accuracy=0.7,
             bytes_sent=10, bytes_received=20),
        dict(round=1, phase="train", partition_id=2, status="failed"),
        dict(round=1, phase="evaluate", partition_id=0, status="ok", accuracy=0.8, macro_f1=0.8, num_examples=30),
        dict(round=1, phase="evaluate", partition_id=1, status="ok", accuracy=0.4, macro_f1=0.4, num_examples=10),
    ]).to_csv(tmp_path / "clients.csv", index=False)
    pd.DataFrame([
        dict(round=1, partition_id=0, layer="l", part="BA", rel_drift=1.0, cosine=0.5),
        dict(round=1, partition_id=1, layer="l", part="BA", rel_drift=3.0, cosine=-0.5),
        dict(round=1, partition_id=0, layer="l", part="B", rel_drift=2.0, cosine=1.0),
    ]).to_csv(tmp_path / "drift.csv", index=False)
    pd.DataFrame([dict(round=1, layer="a", clients=2, inexactness=0.1),
                  dict(round=1, layer="b", clients=2, inexactness=0.3)]).to_csv(tmp_path / "inexactness.csv",
                                                                                  index=False)
    r = summarise(tmp_path / "clients.csv").iloc[0]
    assert r["clients_trained"] == 2 and r["failed"] == 1
    assert r["accuracy"] == pytest.approx((0.8 * 30 + 0.4 * 10) / 40)
    assert r["acc_min"] == 0.4 and r["acc_max"] == 0.8 and r["acc_std"] == pytest.approx(0.2)
    assert r["bytes_up"] == 20 and r["bytes_down"] == 40
    # local models .9/.7 vs global .8/.4 on the same clients: gap (0.1 + 0.3) / 2
    assert r["local_accuracy"] == pytest.approx(0.8) and r["local_global_gap"] == pytest.approx(0.2)
    assert r["drift_mean"] == pytest.approx(2.0) and r["cosine_mean"] == pytest.approx(0.0)
    assert r["drift_b_mean"] == pytest.approx(2.0) and "drift_a_mean" not in r
    assert r["inexactness_mean"] == pytest.approx(0.2)
