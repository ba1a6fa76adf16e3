"""Federated MAE pretraining (``fedhar fl --task pretrain``, issue 22): engines, resume, provenance, use."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fedhar.cli import main
from fedhar.errors import FedharError
from fedhar.model.checkpoint import load_mae, read_metadata
from simulations import rounds as rounds_module
from simulations.config import FLConfig
from simulations.run import run_inprocess
from simulations.task import federation

pytestmark = pytest.mark.slow  # real federations: 5 to 30 s each


def tiny(out_dir, **changes) -> FLConfig:
    return FLConfig(**{**dict(task="pretrain", synthetic_domains=2, synthetic_subjects=6, server_test_fraction=0.3,
                              rounds=2, batch_size=64, out_dir=str(out_dir)), **changes})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDHAR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def pretrained(cache, tmp_path_factory):
    """A 2-round inline federated pretraining (FedAvg), shared by the tests below."""
    return run_inprocess(tiny(tmp_path_factory.mktemp("pretrain") / "run"), engine="inline")


def weights(out):
    return load_mae(out / "backbone.safetensors").state_dict()


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_clients_train_the_whole_mae_and_the_backbone_records_what_made_it(pretrained):
    out = pretrained
    table = pd.read_csv(out / "rounds.csv")
    assert list(table["round"]) == [1, 2] and (table["clients_trained"] == 2).all()
    assert table["recon_loss"].notna().all() and table["accuracy"].isna().all()
    assert table["train_loss"].iloc[1] < table["train_loss"].iloc[0]  # it learns to reconstruct
    mae = load_mae(out / "backbone.safetensors")
    mae_bytes = 4 * sum(v.numel() for v in mae.state_dict().values())  # encoder and decoder, float32
    assert (table["bytes_up"] == 2 * mae_bytes).all() and (table["bytes_down"] == 2 * mae_bytes).all()
    info = json.loads(read_metadata(out / "backbone.safetensors")["pretrain"])
    assert info == json.loads((out / "backbone.json").read_text())
    assert info["rule"] == "fedavg" and info["rounds"] == 2 and info["federated"]
    assert info["bytes_up"] == int(table["bytes_up"].sum())
    assert info["recon_loss_per_round"] == pytest.approx(list(table["recon_loss"]))
    # the server's test subjects and the clients' own test windows trained nothing
    cfg = tiny(out)
    fed = federation(cfg)
    for d in fed.server_test.datasets():
        held = set(np.unique(fed.server_test.subject[fed.server_test.dataset == d]).tolist())
        assert held and not held & set(info["subjects"][d])
    assert info["windows"] == sum(len(train) for train, _ in fed.splits)
    assert not same_weights(weights(out), _random_init(cfg))  # moved from where it started


def _random_init(cfg):
    from fedhar.pretrain import PretrainConfig, random_init_backbone

    return load_mae(random_init_backbone(PretrainConfig(seed=cfg.seed), out_dir=__import__("pathlib").Path(cfg.out_dir))).state_dict()


def test_killed_after_round_1_and_resumed_equals_the_uninterrupted_run(pretrained, tmp_path, monkeypatch):
    save = rounds_module.save_checkpoint

    def save_then_die(out_dir, server_round, *args, **kwargs):
        save(out_dir, server_round, *args, **kwargs)
        if server_round == 1:
            raise KeyboardInterrupt("killed after round 1")

    monkeypatch.setattr(rounds_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_inprocess(tiny(tmp_path / "run"), engine="inline")
    assert not (tmp_path / "run" / "backbone.safetensors").exists()
    monkeypatch.setattr(rounds_module, "save_checkpoint", save)
    resumed = run_inprocess(tiny(tmp_path / "run", resume=True), engine="inline")
    assert same_weights(weights(resumed), weights(pretrained))
    pd.testing.assert_frame_equal(pd.read_csv(resumed / "rounds.csv"), pd.read_csv(pretrained / "rounds.csv"))


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_other_rules_aggregate_the_mae(strategy, pretrained, tmp_path):
    out = run_inprocess(tiny(tmp_path / strategy, strategy=strategy, rounds=1), engine="inline")
    table = pd.read_csv(out / "rounds.csv")
    assert table["clients_trained"].iloc[0] == 2 and table["rejected"].iloc[0] == 0
    assert np.isfinite(table["recon_loss"]).all()
    assert json.loads((out / "backbone.json").read_text())["rule"] == strategy


def test_rules_that_aggregate_adapters_only_and_options_that_do_not_apply_are_refused(tmp_path):
    with pytest.raises(FedharError, match="aggregates LoRA adapters only"):
        tiny(tmp_path, strategy="ffa")
    with pytest.raises(FedharError, match="--arm local"):
        tiny(tmp_path, arm="local")


def test_fedhar_fl_fine_tunes_on_the_federated_backbone_with_few_labels(pretrained, tmp_path, capsys):
    code = main(["fl", "--engine", "inline", "--backbone", str(pretrained / "backbone.safetensors"),
                 "--synthetic-domains", "2", "--synthetic-subjects", "6", "--server-test-fraction", "0.3",
                 "--rounds", "1", "--label-fraction", "0.1", "--out-dir", str(tmp_path / "ft")])
    assert code == 0
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["config"]["backbone"] == str(pretrained / "backbone.safetensors")
    assert config["few_labels"]["labelled_windows"] < config["few_labels"]["training_windows"]
    assert pd.read_csv(tmp_path / "ft" / "rounds.csv")["server_accuracy"].notna().all()
    # another seed holds out other subjects on the server, some of which the backbone trained on
    assert main(["fl", "--engine", "inline", "--backbone", str(pretrained / "backbone.safetensors"),
                 "--synthetic-domains", "2", "--synthetic-subjects", "6", "--server-test-fraction", "0.3",
                 "--rounds", "1", "--seed", "1", "--out-dir", str(tmp_path / "other-seed")]) == 2
    assert "was pretrained on synthetic-d" in capsys.readouterr().err


def test_fedhar_lodo_takes_the_backbone_only_where_it_never_saw_the_test_subjects(pretrained, tmp_path, capsys):
    lodo = ["lodo", "--data", "synthetic", "--synthetic-domains", "2", "--synthetic-subjects", "6",
            "--heldout-data", "synthetic-d0", "--backbone", str(pretrained / "backbone.safetensors"),
            "--modes", "probe", "--epochs", "1", "--out-dir", str(tmp_path / "lodo")]
    assert main(lodo) == 0  # seed 0: LODO's test subjects are the ones the server held out
    rows = pd.read_csv(tmp_path / "lodo" / "runs.csv")
    assert list(rows["backbone_kind"]) == ["file"] and "federated fedavg" in rows["pretrained_on"].iloc[0]
    assert main(lodo + ["--seeds", "1"]) == 2  # another split: the backbone saw some of its test subjects
    assert "was pretrained on synthetic-d0 test subject" in capsys.readouterr().err


def test_the_ray_engine_gives_the_inline_engines_backbone(pretrained, tmp_path):
    out = run_inprocess(tiny(tmp_path / "ray"), engine="ray")
    assert same_weights(weights(out), weights(pretrained))
    pd.testing.assert_frame_equal(pd.read_csv(out / "rounds.csv"), pd.read_csv(pretrained / "rounds.csv"))


def test_flwr_run_pretrains_federatedly(pretrained, tmp_path):
    from simulations.flwr_launch import launch

    out = launch(tiny(tmp_path / "flwr"))
    assert same_weights(weights(out), weights(pretrained))
    assert list(pd.read_csv(out / "rounds.csv")["round"]) == [1, 2]


@pytest.mark.slow
@pytest.mark.long  # about 2.5 min: a SuperLink and SuperNodes (test_flwr_run_pretrains_federatedly covers flwr run)
@pytest.mark.timeout(900)
def test_a_local_deployment_pretrains_federatedly(pretrained, tmp_path, capsys):
    """SuperLink + 2 SuperNodes (``fedhar deploy local``): the same backbone as the inline engine."""
    out = tmp_path / "deploy"
    assert main(["deploy", "local", "--nodes", "2", "--task", "pretrain", "--synthetic-domains", "2",
                 "--synthetic-subjects", "6", "--server-test-fraction", "0.3", "--rounds", "2", "--batch-size", "64",
                 "--round-timeout", "300", "--out-dir", str(out)]) == 0
    assert same_weights(weights(out), weights(pretrained))
    assert list(pd.read_csv(out / "rounds.csv")["clients_trained"]) == [2, 2]
