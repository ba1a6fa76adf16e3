"""The centralised LODO baseline: source selection, learning, resumable tables, run reports."""

import numpy as np
import pandas as pd
import pytest

from fedhar.data import LabelSpace, load, train_test
from fedhar.data.synthetic import SyntheticConfig
from fedhar.finetune import FinetuneConfig, finetune
from fedhar.lodo import LodoPlan, pretrain_sources, run_lodo
from fedhar.model import MaskedAutoencoder
from fedhar.model.mae import MAEConfig


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))


def test_pretraining_never_sees_the_held_out_people():
    assert pretrain_sources("uci-har", ["uci-har", "hapt", "pamap2"]) == ["pamap2"]
    assert pretrain_sources("hapt", ["uci-har", "hapt"]) == []
    assert pretrain_sources("synthetic-d1", ["synthetic-d0", "synthetic-d1"]) == ["synthetic-d0"]


def test_tiny_lodo_learns_resumes_and_extends(tmp_path):
    plan = LodoPlan(datasets=("synthetic",), held_out=("synthetic-d0",), modes=("lora",), ranks=(8,),
                    epochs=4, pretrain_epochs=1, synthetic_domains=3, synthetic_subjects=4, fresh_process=False)
    out = tmp_path / "lodo"
    rows = run_lodo(plan, out, command="test", log=lambda m: None)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["pretrained_on"] == "synthetic-d1+synthetic-d2"
    assert row["accuracy"] > 0.5  # chance is 1/6
    assert row["n_train"] > row["n_test"] > 0
    # the same plan again runs nothing new
    assert len(run_lodo(plan, out, log=lambda m: None)) == 1
    # a wider plan (one more seed) adds only the missing row
    wider = LodoPlan(**{**plan.to_dict(), "seeds": (0, 1)})
    rows = run_lodo(wider, out, log=lambda m: None)
    assert sorted(rows["seed"]) == [0, 1]
    table = (out / "table.md").read_text()
    assert "synthetic-d0" in table and "± " in table  # mean ± std over two seeds


def test_run_report_compares_modes_honestly():
    ws = load("synthetic", synthetic=SyntheticConfig(n_domains=1, subjects_per_domain=4)).windows
    train, test, _ = train_test(ws, 0.3, seed=0)
    labels = LabelSpace.from_ids(ws.y)
    small = MaskedAutoencoder(MAEConfig(depth=2))
    results = {
        mode: finetune(small, train.x[:128], labels.encode(train.y[:128]), test.x, labels.encode(test.y),
                       labels.size, FinetuneConfig(mode=mode, rank=8, epochs=1))
        for mode in ("full", "lora", "qlora")
    }
    full, lora, qlora = results["full"], results["lora"], results["qlora"]
    assert full.trainable_params == full.total_params and full.frozen_bytes == 0
    assert lora.trainable_params == qlora.trainable_params < 0.2 * lora.total_params
    assert qlora.frozen_bytes < 0.2 * lora.frozen_bytes  # NF4 with its block scales vs fp32
    assert lora.state_bytes < full.state_bytes
    for r in results.values():
        assert 0 <= r.accuracy <= 1 and r.sec_per_epoch > 0 and np.isfinite(r.train_loss[0])
