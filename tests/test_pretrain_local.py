"""One client's share of federated MAE pretraining (fedhar.pretrain.train_mae, reconstruction_loss)."""

import numpy as np
import torch

from fedhar.model.mae import MAEConfig, MaskedAutoencoder
from fedhar.pretrain import reconstruction_loss, train_mae

SMALL = MAEConfig(depth=1, dim=48, heads=4, ffn=96, decoder_dim=32, decoder_depth=1, decoder_ffn=64)


def _mae(seed=0):
    torch.manual_seed(seed)
    return MaskedAutoencoder(SMALL)


def _flat(mae):
    return torch.cat([p.detach().reshape(-1) for p in mae.parameters()])


def test_a_seed_gives_the_same_weights_whatever_the_global_generator_did():
    x = np.random.default_rng(0).normal(size=(40, 6, 128)).astype(np.float32)
    a, b, d = _mae(), _mae(), _mae()
    torch.manual_seed(123)
    losses = train_mae(a, x, epochs=2, batch_size=16, lr=1e-3, seed=7)
    torch.manual_seed(999)  # another global generator state: the result must not depend on it
    before = torch.get_rng_state()
    train_mae(b, x, epochs=2, batch_size=16, lr=1e-3, seed=7)
    assert torch.equal(_flat(a), _flat(b)) and len(losses) == 2
    assert torch.equal(torch.get_rng_state(), before)  # and it draws nothing from it
    train_mae(d, x, epochs=1, batch_size=16, lr=1e-3, seed=7)
    assert not torch.equal(_flat(a), _flat(d))
    c = _mae()
    train_mae(c, x, epochs=2, batch_size=16, lr=1e-3, seed=8)
    assert not torch.equal(_flat(a), _flat(c))


def test_the_proximal_term_keeps_the_model_nearer_where_it_started():
    x = np.random.default_rng(1).normal(size=(64, 6, 128)).astype(np.float32)
    start = _flat(_mae())
    free, held = _mae(), _mae()
    train_mae(free, x, epochs=3, batch_size=16, lr=3e-3, seed=0)
    train_mae(held, x, epochs=3, batch_size=16, lr=3e-3, seed=0, proximal_mu=100.0)
    assert (_flat(held) - start).norm() < (_flat(free) - start).norm()


def test_reconstruction_loss_is_the_masked_mse_with_fixed_masks():
    x = np.random.default_rng(2).normal(size=(10, 6, 128)).astype(np.float32)
    mae = _mae()
    loss = reconstruction_loss(mae, x, seed=3, batch_size=4)
    assert loss == reconstruction_loss(mae, x, seed=3, batch_size=4)
    # by hand: the same noise the function draws, one batch at a time, mean over windows
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        parts = []
        for i in range(0, 10, 4):
            batch = torch.from_numpy(x[i:i + 4])
            out = mae(batch, noise=torch.rand(len(batch), SMALL.n_patches, generator=g))
            target = batch.reshape(len(batch), 6, 8, 16).permute(0, 2, 1, 3).reshape(len(batch), 8, 96)
            per_patch = ((out.pred - target) ** 2).mean(-1)
            parts.append((per_patch * out.mask).sum(1) / out.mask.sum(1))
    assert np.isclose(loss, float(torch.cat(parts).mean()), rtol=1e-5)
