"""A federated run leaves its model in peft's own format, and `fedhar evaluate` scores it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedhar.cli import main
from simulations.config import FLConfig
from simulations.run import run_inprocess


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = FLConfig(synthetic_domains=3, synthetic_subjects=3, pretrain_epochs=1, rounds=2, batch_size=32,
                   strategy="fedsa", out_dir=str(out), tensorboard=str(out / "tb"))
    return run_inprocess(cfg, engine="inline")


def test_the_global_adapters_load_with_peft_onto_the_fedhar_backbone(run_dir):
    from peft import PeftModel

    from fedhar.model import Classifier
    from fedhar.model.checkpoint import load_mae

    model_dir = run_dir / "model"
    meta = json.loads((model_dir / "fedhar_model.json").read_text())
    assert meta["strategy"] == "fedsa" and meta["rank"] == 8 and meta["round"] == 2
    saved = load_file(str(model_dir / "adapter_model.safetensors"))
    assert saved and all(k.startswith("base_model.model.blocks.") for k in saved)
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA" and set(config["target_modules"]) >= {"q", "w2"}

    encoder = Classifier.from_mae(load_mae(model_dir / "backbone.safetensors"), meta["n_classes"]).encoder
    peft_model = PeftModel.from_pretrained(encoder, str(model_dir))
    loaded = peft_model.state_dict()
    for key, value in saved.items():  # peft puts the adapter name back: lora_A.weight -> lora_A.default.weight
        name = key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        assert torch.equal(loaded[name], value), key
    a = [v for k, v in saved.items() if ".lora_A." in k]
    assert any(v.abs().sum() > 0 for v in a)
    # FedSA-LoRA keeps each B on its client: the global B is zero, the clients' B are saved beside
    assert all(v.abs().sum() == 0 for k, v in saved.items() if ".lora_B." in k)
    local = load_file(str(model_dir / "clients" / "synthetic-d0" / "local.safetensors"))
    assert local and all(".lora_B." in k for k in local) and any(v.abs().sum() > 0 for v in local.values())


def test_fedhar_evaluate_scores_the_saved_model(run_dir, capsys):
    from fedhar.data import LabelSpace, load
    from fedhar.data.splits import Normaliser
    from fedhar.model import evaluate
    from fedhar.model.saved import load_model

    model_dir = run_dir / "model"
    assert main(["evaluate", str(model_dir), "--data", "synthetic", "--synthetic-subjects", "3",
                 "--client", "synthetic-d0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synthetic: accuracy ") and "windows" in out
    # the number is the peft-loaded model's on those windows
    model, meta = load_model(model_dir, client="synthetic-d0")
    from fedhar.data.synthetic import SyntheticConfig

    ws = load("synthetic", synthetic=SyntheticConfig(subjects_per_domain=3)).windows
    ws = Normaliser.fit(ws).apply(ws)
    accuracy = evaluate(model, ws.x, LabelSpace(tuple(meta["label_space"])).encode(ws.y))["accuracy"]
    assert f"accuracy {accuracy:.3f}" in out
    assert main(["evaluate", str(model_dir), "--data", "synthetic", "--client", "synthetic-d9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedhar: error: unknown client 'synthetic-d9' (did you mean 'synthetic-d")


def test_tensorboard_gets_every_round_and_the_config(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb" / run_dir.name))
    events.Reload()
    accuracy = events.Scalars("round/accuracy")
    assert [e.step for e in accuracy] == [1, 2]
    import pandas as pd

    assert accuracy[-1].value == pytest.approx(pd.read_csv(run_dir / "rounds.csv")["accuracy"].iloc[-1])
    assert {"round/bytes_up", "round/train_loss", "round/seconds"} <= set(events.Tags()["scalars"])
    assert "config/text_summary" in events.Tags()["tensors"]
