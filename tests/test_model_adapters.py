"""Fine-tuning modes: what trains, B = 0 equivalence, NF4 storage, adapter exchange."""

import copy

import pytest
import torch
from bitsandbytes.nn import Params4bit

from fedhar.model import (
    Classifier,
    MaskedAutoencoder,
    count_parameters,
    frozen_weight_bytes,
    load_trainable,
    load_trainable_state_dict,
    prepare_for_finetune,
    save_trainable,
    trainable_bytes,
    trainable_state_dict,
)
from fedhar.model.quantize import quantize_linear_nf4, stored_bytes

N_CLASSES = 5
TARGETS = ("q", "k", "v", "o", "w1", "w2")


@pytest.fixture(scope="module")
def pretrained():
    torch.manual_seed(0)
    return MaskedAutoencoder()


def fresh(pretrained, mode=None, **kw):
    torch.manual_seed(1)
    model = Classifier.from_mae(pretrained, N_CLASSES)
    return prepare_for_finetune(model, mode, **kw) if mode else model


def windows(n=16, seed=2):
    return torch.randn(n, 6, 128, generator=torch.Generator().manual_seed(seed))


def is_adapter_or_head(name):
    return ".lora_" in name or name.startswith("head.")


def test_full_mode_trains_everything(pretrained):
    model = fresh(pretrained, "full")
    assert all(p.requires_grad for p in model.parameters())
    count = count_parameters(model)
    assert count.trainable == count.total == 2_244_672 + sum(p.numel() for p in model.head.parameters())


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_b_is_zero_so_outputs_equal_the_frozen_backbone(pretrained, mode):
    x = windows()
    adapted = fresh(pretrained, mode, rank=4).eval()
    backbone = fresh(pretrained).eval()
    if mode == "qlora":  # the backbone of QLoRA is the quantised one
        for block in backbone.encoder.blocks:
            for parent, name in [(block.attn, n) for n in "qkvo"] + [(block.ffn, "w1"), (block.ffn, "w2")]:
                setattr(parent, name, quantize_linear_nf4(getattr(parent, name)))
    assert all(torch.all(m.weight == 0) for n, m in adapted.named_modules() if n.endswith("lora_B.default"))
    with torch.no_grad():
        assert torch.equal(adapted(x), backbone(x))


def test_qlora_weights_dequantise_close_to_the_float32_ones(pretrained):
    from bitsandbytes.functional import dequantize_4bit

    model = fresh(pretrained, "qlora")
    original = dict(pretrained.encoder.named_parameters())
    for name, p in model.encoder.named_parameters():
        if isinstance(p, Params4bit):
            w = original[name.replace(".base_layer", "")]
            error = (dequantize_4bit(p.data, p.quant_state) - w).norm() / w.norm()
            assert 0 < error < 0.12, name  # NF4 on xavier-uniform weights: about 0.09


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_only_adapters_and_head_receive_gradients(pretrained, mode):
    model = fresh(pretrained, mode)
    model.train()
    torch.nn.functional.cross_entropy(model(windows()), torch.arange(16) % N_CLASSES).backward()
    for name, p in model.named_parameters():
        if is_adapter_or_head(name):
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    adapters = [n for n, _ in model.named_parameters() if ".lora_" in n]
    assert len(adapters) == 6 * len(TARGETS) * 2  # A and B on every target of every block
    # B = 0 at step 0: A gets no signal yet, B does
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B" in n)


def test_lora_parameter_counts(pretrained):
    rank = 8
    model = fresh(pretrained, "lora", rank=rank)
    per_block = 4 * rank * (192 + 192) + rank * (192 + 576) + rank * (576 + 192)
    head = sum(p.numel() for p in model.head.parameters())
    count = count_parameters(model)
    assert count.trainable == 6 * per_block + head
    assert count.total == 2_244_672 + 6 * per_block + head
    assert count_parameters(fresh(pretrained, "qlora", rank=rank)) == count


def test_qlora_targets_are_packed_nf4_and_the_rest_stays_float32(pretrained):
    model = fresh(pretrained, "qlora", nf4_blocksize=64, double_quant=True)
    quantised = {n: p for n, p in model.named_parameters() if isinstance(p, Params4bit)}
    assert len(quantised) == 6 * len(TARGETS)
    for name, p in quantised.items():
        assert name.endswith("base_layer.weight") and name.rsplit(".", 3)[-3] in TARGETS
        qs = p.quant_state
        assert p.quant_type == qs.quant_type == "nf4" and qs.blocksize == 64 and qs.nested
        assert p.dtype == torch.uint8 and not p.requires_grad
        assert p.numel() == qs.shape.numel() // 2  # two 4-bit codes per byte
        assert qs.dtype == torch.float32  # dequantises to the float32 compute dtype
    assert model.encoder.patch_embed.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if is_adapter_or_head(n))


def test_nf4_bytes_are_counted_with_their_quantisation_state():
    linear = torch.nn.Linear(192, 576)
    nested = quantize_linear_nf4(linear, blocksize=64, double_quant=True).weight
    blocks = 192 * 576 // 64
    # codes + uint8 absmax per block + 16-entry NF4 table + offset + float32 absmax per 256 blocks + 256 table
    assert stored_bytes(nested) == 192 * 576 // 2 + blocks + 16 * 4 + 4 + (blocks // 256 + 1) * 4 + 256 * 4
    plain = quantize_linear_nf4(linear, blocksize=128, double_quant=False).weight
    assert stored_bytes(plain) == 192 * 576 // 2 + (192 * 576 // 128) * 4 + 16 * 4
    with pytest.raises(ValueError, match="blocksize"):
        quantize_linear_nf4(linear, blocksize=100)


def test_qlora_frozen_bytes_are_at_most_a_fifth_of_float32(pretrained):
    lora, qlora = fresh(pretrained, "lora"), fresh(pretrained, "qlora")
    ratio = frozen_weight_bytes(qlora) / frozen_weight_bytes(lora)
    print(f"\nfrozen bytes: lora (fp32) {frozen_weight_bytes(lora)}, qlora (nf4) {frozen_weight_bytes(qlora)}, "
          f"ratio {ratio:.3f}; trainable bytes {trainable_bytes(qlora)}")
    assert frozen_weight_bytes(lora) == 2_244_672 * 4
    assert ratio <= 0.20
    assert trainable_bytes(lora) == trainable_bytes(qlora)
    assert frozen_weight_bytes(fresh(pretrained, "full")) == 0


@pytest.mark.parametrize("mode", ["lora", "qlora", "full"])
def test_trainable_state_round_trip_is_exact(pretrained, mode, tmp_path):
    model = fresh(pretrained, mode, rank=4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = windows(32), torch.arange(32) % N_CLASSES
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    state = trainable_state_dict(model)
    if mode != "full":
        assert all(is_adapter_or_head(k) for k in state)
        assert {"head.1.running_mean", "head.1.running_var", "head.1.num_batches_tracked"} <= state.keys()
    path = tmp_path / "update.safetensors"
    save_trainable(state, path, {"mode": mode, "rank": 4})
    loaded, metadata = load_trainable(path)
    assert metadata["mode"] == mode and metadata["rank"] == "4"

    other = fresh(pretrained, mode, rank=4)
    load_trainable_state_dict(other, loaded)
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_loading_a_mismatched_state_fails_loudly(pretrained):
    lora = fresh(pretrained, "lora", rank=4)
    state = trainable_state_dict(lora)
    with pytest.raises(KeyError, match="missing"):
        load_trainable_state_dict(fresh(pretrained, "lora", rank=4, targets=("q", "v")), state)
    with pytest.raises(ValueError, match="shape"):
        load_trainable_state_dict(fresh(pretrained, "lora", rank=2), state)


def test_qlora_trains_again_after_evaluation(pretrained):
    # bitsandbytes' AVX512-BF16 eval fast path broke training after eval; we switch it off.
    model = fresh(pretrained, "qlora")
    x, y = windows(), torch.arange(16) % N_CLASSES
    model.eval()
    with torch.no_grad():
        before = model(x)
        again = model(x)
    assert torch.equal(before, again)
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora_B" in n)


def test_prepare_rejects_bad_requests(pretrained):
    with pytest.raises(ValueError, match="unknown fine-tuning mode"):
        fresh(pretrained, "int8")
    with pytest.raises(ValueError, match="no encoder linear named"):
        fresh(pretrained, "lora", targets=("query",))
    with pytest.raises(ValueError, match="rank"):
        fresh(pretrained, "lora", rank=0)
    model = fresh(pretrained, "lora")
    with pytest.raises(ValueError, match="already prepared"):
        prepare_for_finetune(model, "qlora")


def test_preparing_a_copy_leaves_the_pretrained_mae_untouched(pretrained):
    before = copy.deepcopy(pretrained.encoder.state_dict())
    fresh(pretrained, "qlora")
    assert all(torch.equal(before[k], v) for k, v in pretrained.encoder.state_dict().items())
