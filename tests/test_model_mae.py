"""MAE backbone: shapes, exact parameter count, masking, masked-only loss, checkpoints."""

import json

import pytest
import torch
from safetensors.torch import save_file

from fedhar.model import mae as mae_module
from fedhar.model.checkpoint import CheckpointError, load_mae, save_mae
from fedhar.model.mae import (
    Encoder,
    MAEConfig,
    MaskedAutoencoder,
    count_encoder_parameters,
    patchify,
    random_masking,
    unpatchify,
)
from fedhar.model.training import pretrain_step

TINY = MAEConfig(dim=32, depth=2, heads=4, ffn=64, decoder_dim=16, decoder_depth=1, decoder_heads=2,
                 decoder_ffn=32)


def test_encoder_has_exactly_the_documented_parameter_count():
    encoder = Encoder(MAEConfig())
    assert sum(p.numel() for p in encoder.parameters()) == 2_244_672
    assert count_encoder_parameters(MAEConfig()) == 2_244_672
    assert "2,244,672" in mae_module.__doc__


def test_attention_and_ffn_projections_are_separate_named_linears():
    encoder = Encoder(MAEConfig())
    names = {n.rpartition(".")[2] for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"q", "k", "v", "o", "w1", "w2"} <= names
    assert sum(1 for n, _ in encoder.named_modules() if n.endswith(".attn.q")) == 6


def test_patchify_makes_8_tokens_of_16_samples_by_6_channels():
    x = torch.arange(2 * 6 * 128, dtype=torch.float32).reshape(2, 6, 128)
    patches = patchify(x, 16)
    assert patches.shape == (2, 8, 96)
    # token 3 holds samples 48..63 of every channel, channel-major
    assert torch.equal(patches[1, 3, 16:32], x[1, 1, 48:64])
    assert torch.equal(unpatchify(patches, 6), x)


def test_encoder_rejects_wrong_window_shape():
    with pytest.raises(ValueError, match=r"\(N, 6, 128\)"):
        Encoder(TINY)(torch.zeros(2, 128, 6))


def test_random_masking_keeps_25_percent_per_sample_independently():
    torch.manual_seed(0)
    ids_keep, mask, ids_restore = random_masking(64, 8, 0.75)
    assert ids_keep.shape == (64, 2)
    assert torch.all(mask.sum(dim=1) == 6)
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)  # kept patches are unmasked
    assert len({tuple(row.tolist()) for row in mask}) > 10  # a different draw per sample
    shuffled = torch.gather(torch.arange(8).expand(64, 8), 1, torch.argsort(ids_restore, dim=1))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), torch.arange(8).expand(64, 8))


def _forward_with_fixed_mask(model, x):
    noise = torch.rand(len(x), model.config.n_patches, generator=torch.Generator().manual_seed(1))
    return model(x, noise=noise), noise


def test_loss_is_mse_over_masked_patches_only():
    torch.manual_seed(0)
    model = MaskedAutoencoder(TINY).eval()
    x = torch.randn(4, 6, 128)
    out, _ = _forward_with_fixed_mask(model, x)
    target = patchify(x, 16)
    manual = (((out.pred - target) ** 2).mean(-1) * out.mask).sum() / out.mask.sum()
    assert torch.allclose(out.loss, manual)

    kept = int(torch.nonzero(out.mask[0] == 0)[0])
    masked = int(torch.nonzero(out.mask[0] == 1)[0])
    x_kept_changed = x.clone()
    x_kept_changed[0, :, kept * 16:(kept + 1) * 16] += 5.0
    assert torch.equal(model.reconstruction_loss(x_kept_changed, out.pred, out.mask), out.loss)
    x_masked_changed = x.clone()
    x_masked_changed[0, :, masked * 16:(masked + 1) * 16] += 5.0
    assert model.reconstruction_loss(x_masked_changed, out.pred, out.mask) > out.loss + 1.0


def test_encoder_sees_only_the_kept_patches():
    torch.manual_seed(0)
    model = MaskedAutoencoder(TINY).eval()
    x = torch.randn(3, 6, 128)
    out, noise = _forward_with_fixed_mask(model, x)
    ids_keep, _, _ = random_masking(3, 8, 0.75, noise=noise)
    masked = int(torch.nonzero(out.mask[0] == 1)[0])
    x2 = x.clone()
    x2[0, :, masked * 16:(masked + 1) * 16] = 100.0
    with torch.no_grad():
        assert torch.equal(model.encoder(x, ids_keep=ids_keep), model.encoder(x2, ids_keep=ids_keep))


def test_norm_pix_loss_is_off_by_default_and_normalises_each_target_patch():
    assert MAEConfig().norm_pix_loss is False
    torch.manual_seed(0)
    model = MaskedAutoencoder(MAEConfig(**{**TINY.to_dict(), "norm_pix_loss": True})).eval()
    x = torch.randn(2, 6, 128)
    out, _ = _forward_with_fixed_mask(model, x)
    masked = int(torch.nonzero(out.mask[0] == 1)[0])
    x_affine = x.clone()
    x_affine[0, :, masked * 16:(masked + 1) * 16] = x_affine[0, :, masked * 16:(masked + 1) * 16] * 3 + 7
    assert torch.allclose(model.reconstruction_loss(x_affine, out.pred, out.mask), out.loss, atol=1e-4)


def test_pretraining_steps_reduce_the_reconstruction_loss():
    torch.manual_seed(0)
    model = MaskedAutoencoder(TINY)
    t = torch.linspace(0, 12.56, 128)
    x = torch.stack([torch.sin(t * (c + 1)) for c in range(6)]).expand(32, 6, 128).contiguous()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [pretrain_step(model, x, opt) for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_mae_checkpoint_round_trip_keeps_config_and_weights(tmp_path):
    torch.manual_seed(0)
    config = MAEConfig(**{**TINY.to_dict(), "mask_ratio": 0.5})
    model = MaskedAutoencoder(config)
    path = tmp_path / "mae.safetensors"
    save_mae(model, path)
    loaded = load_mae(path)
    assert loaded.config == config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 6, 128)
    noise = torch.rand(2, 8)
    assert torch.equal(model.eval()(x, noise=noise).pred, loaded.eval()(x, noise=noise).pred)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.safetensors: checkpoint not found"):
        load_mae(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_mae(garbage)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match="other.safetensors: format 'something-else'"):
        load_mae(other)
    bad_config = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad_config),
              metadata={"format": "fedhar-mae-1", "config": json.dumps({"dim": 32, "colour": 1})})
    with pytest.raises(CheckpointError, match="bad MAE config"):
        load_mae(bad_config)
