"""Client-side building blocks: every side builds the same model from the same config."""

import torch

from fedhar.model import MaskedAutoencoder, save_mae, trainable_state_dict
from fedhar.model.mae import MAEConfig
from simulations import task
from simulations.config import FLConfig


def test_build_model_is_identical_on_every_call(tmp_path):
    path = tmp_path / "mae.safetensors"
    save_mae(MaskedAutoencoder(MAEConfig(depth=2)), path)
    task._mae.cache_clear()  # the first call loads (and builds) the MAE: it must not shift the seed
    cfg = FLConfig(seed=3)
    first = trainable_state_dict(task.build_model(cfg, 6, path, pid=0))
    second = trainable_state_dict(task.build_model(cfg, 6, path, pid=1))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other_seed = trainable_state_dict(task.build_model(FLConfig(seed=4), 6, path))
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)


def test_ffa_freezes_a_and_heterogeneous_ranks_follow_the_client(tmp_path):
    path = tmp_path / "mae.safetensors"
    save_mae(MaskedAutoencoder(MAEConfig(depth=1)), path)
    ffa = task.build_model(FLConfig(strategy="ffa"), 6, path, pid=0)
    assert not any(".lora_A." in k for k in trainable_state_dict(ffa))
    het = FLConfig(strategy="hetlora", rank=16, client_ranks="4,8")
    a = trainable_state_dict(task.build_model(het, 6, path, pid=1))["encoder.blocks.0.attn.q.lora_A.default.weight"]
    server = trainable_state_dict(task.build_model(het, 6, path))["encoder.blocks.0.attn.q.lora_A.default.weight"]
    assert a.shape[0] == 8 and server.shape[0] == 16
