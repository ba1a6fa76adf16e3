"""Smoke test of benchmarks/bench_finetune_step.py: a tiny run of its core function.

Not a timing test: 2 steps at batch 8 on one thread, checking that every mode and path
gives a row with sane sizes, that the target checks are computed, and that the CUDA
option skips cleanly on a machine without CUDA.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_finetune_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_finetune_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture
def one_thread():
    # One intra-op thread: on a busy 2-core machine, spinning OpenMP threads slow tiny steps a lot.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_core_function_returns_a_row_per_mode_and_path(bench, one_thread):
    variants = bench.make_variants(diagnostics=False)
    rows = bench.measure(variants, batch=8, warmup=0, steps=2, rounds=1, memory_steps=1, tensor_peak=False,
                         log=lambda *_: None)
    by = {r["variant"]: r for r in rows}
    for mode, rank in bench.MODES:
        for path in bench.PATHS:
            label = f"{path} {mode}" + (f" r{rank}" if rank else "")
            row = by[label]
            assert row["steps_timed"] == 2 and row["ms_q25"] <= row["ms_median"] <= row["ms_q75"]
            assert row["ms_median"] > 0 and row["saved_for_backward_mib"] > 0
    # The bare model and fedhar's have the same shape: equal parameter and byte counts.
    for mode, rank in bench.MODES:
        m = f"{mode}" + (f" r{rank}" if rank else "")
        for key in ("trainable_params", "trainable_bytes", "frozen_weight_bytes", "optimizer_state_bytes"):
            assert by[f"bare {m}"][key] == by[f"fedhar {m}"][key], (m, key)
    full, lora8, qlora8 = by["fedhar full"], by["fedhar lora r8"], by["fedhar qlora r8"]
    assert full["frozen_weight_bytes"] == 0 and full["trainable_params"] > 2_244_672
    assert lora8["frozen_weight_bytes"] > 4 * 2_244_672 * 0.99  # float32 encoder
    assert qlora8["frozen_weight_bytes"] < 0.2 * lora8["frozen_weight_bytes"]  # NF4 codes + state
    assert full["optimizer_state_bytes"] >= 2 * full["trainable_bytes"]  # AdamW: two moments

    checks = {c["check"]: c for c in bench.check_rows(rows)}
    assert checks["fedhar/bare, full"]["target_max"] == pytest.approx(1.10)
    assert checks["lora r8 / full (fedhar)"]["target_max"] == pytest.approx(0.90)
    assert checks["lora r32 / full (fedhar)"]["target_max"] == pytest.approx(1.00)
    assert checks["qlora r8 / lora r8 (fedhar)"]["target_max"] == pytest.approx(1.15)
    assert all(c["result"] in ("PASS", "MISS") for c in checks.values() if c["target_max"] != "")
    r8 = checks["lora r8 / full (fedhar)"]
    assert r8["ratio"] == pytest.approx(by["fedhar lora r8"]["ms_median"] / full["ms_median"])


def test_cuda_option_skips_cleanly_without_cuda(bench, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.main(["--device", "cuda"]) == 0
    assert "CUDA is not available" in capsys.readouterr().out


def test_fused_lora_diagnostic_computes_what_peft_computes(bench):
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    base = torch.nn.Linear(12, 20)
    fused = bench.AddmmLoRALinear(torch.nn.Linear(12, 20), rank=4, alpha=16)
    fused.base.load_state_dict(base.state_dict())
    with torch.no_grad():
        fused.lora_B.normal_()  # B = 0 at start would hide the adapter path
    holder = torch.nn.Sequential()
    holder.add_module("q", base)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=16, target_modules=["q"]), holder)
    with torch.no_grad():
        holder.q.lora_A["default"].weight.copy_(fused.lora_A)
        holder.q.lora_B["default"].weight.copy_(fused.lora_B)
    x = torch.randn(3, 5, 12)
    out_peft, out_fused = holder(x), fused(x)
    torch.testing.assert_close(out_fused, out_peft)
    out_peft.square().sum().backward()
    out_fused.square().sum().backward()
    torch.testing.assert_close(fused.lora_A.grad, holder.q.lora_A["default"].weight.grad)
    torch.testing.assert_close(fused.lora_B.grad, holder.q.lora_B["default"].weight.grad)
