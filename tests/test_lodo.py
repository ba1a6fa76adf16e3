"""The centralised LODO baseline: source selection, learning, resumable tables, run reports."""

import numpy as np
import pandas as pd
import pytest
import torch

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
    assert pd.isna(row["peak_mem_mb"])  # in-process on CPU: not this run's own peak, so left empty (issue 27)
    # the run's model is saved (peft adapters, head, backbone) and scores as the run did on its test windows
    from fedhar.lodo import model_name
    from fedhar.model.saved import load_model

    saved = out / "models" / model_name(row.to_dict())
    assert (saved / "adapter_model.safetensors").exists() and (saved / "adapter_config.json").exists()
    model, meta = load_model(saved)
    assert meta["rank"] == 8 and meta["mode"] == "lora" and model.head.n_classes == len(meta["label_space"])
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


def test_other_backbone_excludes_the_same_people_and_repeats_no_recording():
    # USC-HAD held out: HAPT holds UCI-HAR's recordings, so only HAPT is pretrained on
    assert pretrain_sources("usc-had", ["uci-har", "usc-had", "hapt"]) == ["hapt"]
    assert pretrain_sources("uci-har", ["uci-har", "usc-had", "hapt"]) == ["usc-had"]


def test_backbone_kinds_and_the_random_init_control(tmp_path, monkeypatch):
    from fedhar.lodo import backbone_for
    from fedhar.model.checkpoint import load_mae

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    plan = LodoPlan(datasets=("synthetic",), synthetic_domains=2, synthetic_subjects=3, pretrain_epochs=1)
    ws = load("synthetic", synthetic=SyntheticConfig(n_domains=2, subjects_per_domain=3)).windows
    study = {d: ws.subset(ws.dataset == d) for d in ws.datasets()}
    none, described = backbone_for("synthetic-d0", "none", study, plan, log=lambda m: None)
    assert described.startswith("none (random init")
    torch.manual_seed(0)
    fresh = MaskedAutoencoder(MAEConfig())
    for k, v in load_mae(none).state_dict().items():  # exactly the untrained initialisation
        assert torch.equal(v, fresh.state_dict()[k]), k
    other, described = backbone_for("synthetic-d0", "other", study, plan, log=lambda m: None)
    assert described == "synthetic-d1" and other != none
    both, described = backbone_for("synthetic-d0", "other+synthetic", study, plan, log=lambda m: None)
    assert described.startswith("synthetic-d1 + synthetic population") and both not in (none, other)
    with pytest.raises(ValueError, match="no other dataset"):
        backbone_for("synthetic-d0", "other", {"synthetic-d0": study["synthetic-d0"]}, plan, log=lambda m: None)


def test_probe_trains_only_the_head_on_frozen_features():
    ws = load("synthetic", synthetic=SyntheticConfig(n_domains=1, subjects_per_domain=4)).windows
    train, test, _ = train_test(ws, 0.3, seed=0)
    labels = LabelSpace.from_ids(ws.y)
    small = MaskedAutoencoder(MAEConfig(depth=2))
    before = {k: v.clone() for k, v in small.state_dict().items()}
    probe = finetune(small, train.x, labels.encode(train.y), test.x, labels.encode(test.y), labels.size,
                     FinetuneConfig(mode="probe", epochs=3))
    head = 128 * 192 + 128 + 2 * 128 + 128 * labels.size + labels.size  # Linear, BatchNorm, Linear
    assert probe.trainable_params == head
    assert probe.accuracy > 1.5 / labels.size  # the head learns from the frozen features
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())  # backbone untouched


def test_a_given_backbone_is_used_only_if_it_never_saw_the_held_out_people(tmp_path):
    from fedhar.lodo import backbone_for

    plan = LodoPlan(datasets=("synthetic",), synthetic_domains=2, synthetic_subjects=3, pretrain_epochs=1)
    ws = load("synthetic", synthetic=SyntheticConfig(n_domains=2, subjects_per_domain=3)).windows
    study = {d: ws.subset(ws.dataset == d) for d in ws.datasets()}
    pretrained, _ = backbone_for("synthetic-d0", "other", study, plan, log=lambda m: None)  # saw synthetic-d1
    given = LodoPlan(**{**plan.to_dict(), "backbone_files": (f"synthetic-d0={pretrained}",)})
    # no pretraining data needed: the checkpoint's sidecar says what it saw
    path, described = backbone_for("synthetic-d0", "other", {}, given, log=lambda m: None)
    assert path == pretrained and described == "synthetic-d1"
    leaking = LodoPlan(**{**plan.to_dict(), "backbone_files": (f"synthetic-d1={pretrained}",)})
    with pytest.raises(ValueError, match="must not have seen"):
        backbone_for("synthetic-d1", "other", {}, leaking, log=lambda m: None)
    with pytest.raises(ValueError, match="sidecar"):
        backbone_for("synthetic-d0", "other", {}, LodoPlan(**{**plan.to_dict(), "backbone_files": (
            f"synthetic-d0={tmp_path / 'missing.safetensors'}",)}), log=lambda m: None)


def test_a_new_column_widens_an_older_runs_file(tmp_path):
    import pandas as pd

    from fedhar.lodo import append_row

    path = tmp_path / "runs.csv"
    append_row(path, {"seed": 0, "accuracy": 0.9})
    append_row(path, {"seed": 1, "device": "cpu", "accuracy": 0.8})  # written by newer code
    append_row(path, {"seed": 2, "device": "cpu", "accuracy": 0.7})
    rows = pd.read_csv(path)
    assert list(rows["seed"]) == [0, 1, 2] and list(rows["accuracy"]) == [0.9, 0.8, 0.7]
    assert rows["device"].isna().tolist() == [True, False, False]


def test_prepared_windows_are_read_without_the_raw_recordings(tmp_path):
    from fedhar.data.loading import load_prepared
    from fedhar.errors import FedharError

    cfg = SyntheticConfig(n_domains=1, subjects_per_domain=3)
    prepared = load("synthetic", synthetic=cfg)
    ws = load_prepared(prepared.cache_file, "synthetic")
    assert np.array_equal(ws.x, prepared.windows.x) and np.array_equal(ws.subject, prepared.windows.subject)
    with pytest.raises(FedharError, match="not 'uci-har'"):
        load_prepared(prepared.cache_file, "uci-har")
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(prepared.cache_file.read_bytes()[:-10])
    damaged.with_suffix(".json").write_text(prepared.cache_file.with_suffix(".json").read_text())
    with pytest.raises(FedharError, match="checksum"):
        load_prepared(damaged, "synthetic")
