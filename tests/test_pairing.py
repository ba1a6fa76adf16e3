"""One comparison = one batch (fedhar.pairing): the reports refuse mixed-batch pairs and repeated seeds."""

import pandas as pd
import pytest

from fedhar.errors import FedharError
from fedhar.lodo_report import comparison
from fedhar.pairing import check_unique, pair


def arm(accs, **batch):
    return pd.DataFrame([{"seed": s, "accuracy": a, "source": f"runs.csv:{s + 2}", **batch} for s, a in enumerate(accs)])


def test_pairs_of_one_batch_are_kept():
    p = pair(arm([0.9, 0.8], code="abc", threads=1), arm([0.8, 0.7], code="abc", threads=1), "accuracy")
    assert list(p.a) == [0.9, 0.8] and not p.refused and p.batch == {"code": "abc", "threads": 1}


@pytest.mark.parametrize("field, a, b", [("code", "9eff34a", "ae9f02f"), ("threads", 1, 8), ("device", "cpu", "cuda"),
                                         ("epochs", 20, 50), ("backbone", "mae-a.safetensors", "mae-b.safetensors")])
def test_a_pair_differing_in_any_batch_field_is_refused_naming_both_rows(field, a, b):
    other = {"code": "x", "threads": 1, "device": "cpu", "epochs": 20, "backbone": "mae-a.safetensors"}
    left = arm([0.9, 0.8, 0.7], **{**other, field: a})
    right = arm([0.8, 0.7, 0.6], **{**other, field: a})
    right.loc[0, field] = b  # only seed 0 differs
    right.loc[0, "source"] = "other/runs.csv:9"
    p = pair(left, right, "accuracy", what="lora - full")
    assert list(p.a.index) == [1, 2]
    assert p.refused == [f"lora - full: seed 0: runs.csv:2 and other/runs.csv:9 differ in {field} {a} vs {b}"]


def test_the_compared_factor_is_exempt_and_an_unrecorded_field_is_a_mismatch():
    p = pair(arm([0.9, 0.8], backbone="hapt"), arm([0.8, 0.7], backbone="none"), "accuracy", exempt=("backbone",))
    assert len(p.a) == 2 and not p.refused
    p = pair(arm([0.9], code="abc"), arm([0.8]).assign(code=None), "accuracy")
    assert len(p.a) == 0 and "code abc vs unrecorded" in p.refused[0]


def test_a_per_seed_backbone_pairs_on_each_seeds_own_checkpoint_and_refuses_a_mismatch_within_a_pair():
    files = ["mae-s0.safetensors", "mae-s1.safetensors", "mae-s2.safetensors"]  # a new backbone per seed
    lora = arm([0.9, 0.8, 0.7], code="x").assign(backbone=files)
    full = arm([0.8, 0.7, 0.6], code="x").assign(backbone=files)
    assert pair(lora, full, "accuracy").refused  # without per_seed the seeds are three batches
    p = pair(lora, full, "accuracy", per_seed=("backbone",))
    assert list(p.a.index) == [0, 1, 2] and not p.refused and p.batch == {"code": "x"}
    full.loc[2, "backbone"] = "mae-s0.safetensors"  # seed 2's arms on different checkpoints: never paired
    p = pair(lora, full, "accuracy", per_seed=("backbone",))
    assert list(p.a.index) == [0, 1] and "differ in backbone mae-s2.safetensors vs mae-s0.safetensors" in p.refused[0]


def test_seeds_of_two_batches_keep_the_larger_batch():
    left = arm([0.9, 0.8, 0.7, 0.6], code="new").assign(code=["old", "new", "new", "new"])
    right = arm([0.8, 0.7, 0.6, 0.5], code="new").assign(code=["old", "new", "new", "new"])
    p = pair(left, right, "accuracy")
    assert list(p.a.index) == [1, 2, 3] and "seed 0" in p.refused[0] and "another batch (code old)" in p.refused[0]


def test_a_repeated_seed_is_an_error_naming_both_rows():
    twice = pd.concat([arm([0.9, 0.8]), arm([0.95]).assign(source="again.csv:2")], ignore_index=True)
    with pytest.raises(FedharError, match="seed 0.*runs.csv:2 and again.csv:2"):
        check_unique(twice, ["seed"])
    with pytest.raises(FedharError, match="runs.csv:2 and again.csv:2"):
        pair(twice, arm([0.8, 0.7]), "accuracy")


def lodo_rows(code_none="a", threads_none=1, repeat=False):
    base = dict(held_out="uci-har", train_fraction=0.7, trainable_params=10, total_params=100, frozen_bytes=1,
                state_bytes=1, sec_per_epoch=1.0, macro_f1=0.5, rank=0, mode="probe", epochs=20, device="cpu")
    out = []
    for seed, (none, other) in enumerate(((0.50, 0.60), (0.52, 0.61), (0.49, 0.62))):
        out.append({**base, "backbone_kind": "none", "pretrained_on": "none", "backbone": "none.st", "seed": seed,
                    "accuracy": none, "code": code_none, "threads": threads_none, "source": f"r.csv:{2 * seed + 2}"})
        out.append({**base, "backbone_kind": "other", "pretrained_on": "hapt", "backbone": "hapt.st", "seed": seed,
                    "accuracy": other, "code": "a", "threads": 1, "source": f"r.csv:{2 * seed + 3}"})
    if repeat:  # the same configuration and seed again: never averaged into the seed
        out.append({**out[0], "accuracy": 0.9, "source": "r.csv:99"})
    return pd.DataFrame(out)


def test_the_lodo_report_refuses_mixed_batches_and_repeated_seeds():
    assert "| probe | +10.7 pts [" in comparison(lodo_rows())
    text = comparison(lodo_rows(code_none="b", threads_none=3))
    assert "| probe | refused: not one batch (3 pairs, see below) |" in text
    assert "- uci-har (cpu) probe: other - none: seed 0: r.csv:3 and r.csv:2 differ in code a vs b, threads 1 vs 3" in text
    with pytest.raises(FedharError, match="r.csv:2 and r.csv:99"):
        comparison(lodo_rows(repeat=True))


def test_report_modules_exit_2_with_one_line_on_a_repeated_seed(tmp_path, capsys):
    from fedhar import lodo_report

    (tmp_path / "x").mkdir()
    lodo_rows(repeat=True).drop(columns="source").to_csv(tmp_path / "x" / "runs.csv", index=False)
    assert lodo_report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x/runs.csv:2 and" in err and "runs.csv:8" in err
