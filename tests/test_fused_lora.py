"""Fused LoRA (fedhar/model/fused_lora.py) against peft's and bitsandbytes' own layers:
same state-dict keys, same outputs and gradients within float32 rounding."""

import copy

import pytest
import torch

from fedhar.model import Classifier, MAEConfig, MaskedAutoencoder, prepare_for_finetune, trainable_state_dict
from fedhar.model.fused_lora import fuse_lora


def pair(mode: str, rank: int = 8, dropout: float = 0.0):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(MAEConfig())
    peft_model = prepare_for_finetune(Classifier.from_mae(mae, 6), mode, rank=rank, dropout=dropout)
    with torch.no_grad():  # B = 0 at init: give it values so the adapter path matters
        for name, p in peft_model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    fused = copy.deepcopy(peft_model)
    assert fuse_lora(fused) == 36  # q, k, v, o, w1, w2 in 6 blocks
    return peft_model, fused


def grads(model, x, y):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = model(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, x.grad


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_fused_outputs_and_gradients_equal_peft(mode):
    peft_model, fused = pair(mode)
    assert trainable_state_dict(fused).keys() == trainable_state_dict(peft_model).keys()
    assert fused.state_dict().keys() == peft_model.state_dict().keys()
    torch.manual_seed(1)
    x, y = torch.randn(16, 6, 128), torch.randint(0, 6, (16,))
    peft_model.train(), fused.train()
    torch.manual_seed(2)
    out_p, g_p, gx_p = grads(peft_model, x, y)
    torch.manual_seed(2)  # the head's dropout draws the same mask
    out_f, g_f, gx_f = grads(fused, x, y)
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-4, atol=1e-6)
    assert g_f.keys() == g_p.keys() and any(".lora_A." in k for k in g_f)
    for k in g_p:
        torch.testing.assert_close(g_f[k], g_p[k], rtol=1e-4, atol=1e-6, msg=k)
    peft_model.eval(), fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), peft_model(x), rtol=1e-5, atol=1e-5)


def test_the_4bit_weight_stays_4bit_and_one_layer_matches_bitsandbytes():
    import bitsandbytes as bnb

    peft_model, fused = pair("qlora")
    layer = fused.encoder.blocks[0].ffn.w1
    base = layer.get_base_layer()
    assert isinstance(base, bnb.nn.Linear4bit) and base.weight.dtype == torch.uint8
    x = torch.randn(3, 5, base.in_features)
    ref = base(x) + layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)


class FixedDropout(torch.nn.Module):
    """peft's dropout with the mask keep_mask draws (patched below to a fixed one)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return x * fixed_mask(x.shape, self.p) / (1 - self.p)


def fixed_mask(shape, p):
    g = torch.Generator().manual_seed(shape.numel())
    return torch.rand(shape, generator=g) >= p


def test_dropout_equals_peft_given_the_same_mask(monkeypatch):
    import fedhar.model.fused_lora as fl

    peft_model, fused = pair("lora", dropout=0.1)
    for m in peft_model.modules():
        if hasattr(m, "lora_dropout"):
            m.lora_dropout["default"] = FixedDropout(0.1)
    monkeypatch.setattr(fl, "keep_mask", lambda shape, p: fixed_mask(shape, p))
    x, y = torch.randn(16, 6, 128), torch.randint(0, 6, (16,))
    peft_model.train(), fused.train()
    torch.manual_seed(2)
    out_p, g_p, gx_p = grads(peft_model, x, y)
    torch.manual_seed(2)
    out_f, g_f, gx_f = grads(fused, x, y)
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-4, atol=1e-6)
    for k in g_p:
        torch.testing.assert_close(g_f[k], g_p[k], rtol=1e-4, atol=1e-6, msg=k)


def test_keep_mask_keeps_one_minus_p():
    from fedhar.model.fused_lora import keep_mask

    torch.manual_seed(0)
    mask = keep_mask(torch.Size([1000, 1001]), 0.05)
    assert mask.shape == (1000, 1001) and mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.95) < 0.002
    assert abs(keep_mask(torch.Size([200_000]), 0.5).float().mean().item() - 0.5) < 0.005


def test_prepare_for_finetune_fused_option():
    torch.manual_seed(0)
    model = prepare_for_finetune(Classifier.from_mae(MaskedAutoencoder(MAEConfig()), 6), "lora", fused=True)
    assert type(model.encoder.blocks[0].attn.q).__name__ == "FusedLinear"
    assert fuse_lora(model) == 0  # already fused
