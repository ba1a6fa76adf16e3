"""The paper comparison is generated from run rows alone."""

import pandas as pd

from fedhar.lodo_report import comparison


def rows():
    base = dict(held_out="uci-har", pretrained_on="synthetic", train_fraction=0.7, trainable_params=10,
                total_params=100, frozen_bytes=2**20, state_bytes=2**21, sec_per_epoch=1.0, macro_f1=0.9)
    out = []
    for seed, acc in ((0, 0.95), (1, 0.97)):
        out.append({**base, "mode": "full", "rank": 0, "seed": seed, "accuracy": acc})
        out.append({**base, "mode": "lora", "rank": 16, "seed": seed, "accuracy": acc - 0.01})
    out.append({**base, "mode": "lora", "rank": 8, "seed": 0, "accuracy": 0.9})
    out.append({**base, "mode": "full", "rank": 0, "seed": 0, "accuracy": 0.91, "train_fraction": 0.3})
    return pd.DataFrame(out)


def test_comparison_puts_paper_numbers_beside_ours():
    text = comparison(rows())
    assert "| uci-har | synthetic | cpu | full | 0.960 ± 0.014 (n=2) |" in text  # rows without a device: CPU
    assert "| uci-har | cpu | -1.0 pts [-1.0, -1.0] (n=2) (difference)" in text  # LoRA - full, paired by seed
    assert "| 0.968 | 0.969 |" in text  # paper Table II, UCI-HAR full fine-tuning
    assert "| 8 | 0.900 (n=1) |" in text and "0.9352" in text  # rank ablation beside Table VI
    assert "| 30% / 70% | 0.910 (n=1) |" in text and "0.938" in text  # Table VII


def test_rows_of_different_devices_are_never_averaged_or_paired():
    gpu = rows().assign(device="cuda (H200)", accuracy=lambda r: r["accuracy"] - 0.05)
    text = comparison(pd.concat([rows(), gpu], ignore_index=True))
    assert "| uci-har | synthetic | cpu | full | 0.960 ± 0.014 (n=2) |" in text
    assert "| uci-har | synthetic | cuda (H200) | full | 0.910 ± 0.014 (n=2) |" in text
    assert "| uci-har | cuda (H200) | -1.0 pts [-1.0, -1.0] (n=2) (difference)" in text


def test_pretraining_section_pairs_each_backbone_with_the_random_init_control():
    base = dict(held_out="usc-had", train_fraction=0.7, trainable_params=10, total_params=100, frozen_bytes=1,
                state_bytes=1, sec_per_epoch=1.0, macro_f1=0.5, rank=0, mode="probe")
    out = []
    for seed, (none, other) in enumerate(((0.50, 0.60), (0.52, 0.61), (0.49, 0.62))):
        out.append({**base, "backbone_kind": "none", "pretrained_on": "none (random init, seed 0)", "seed": seed, "accuracy": none})
        out.append({**base, "backbone_kind": "other", "pretrained_on": "hapt", "seed": seed, "accuracy": other})
    text = comparison(pd.DataFrame(out))
    assert "### usc-had held out" in text
    assert "| none | none (random init, seed 0) | 0.503 ± 0.015 (n=3) |" in text
    assert "| probe | +10.7 pts [" in text and "(difference)" in text


def test_paired_interval_is_scipys_paired_t_interval():
    from scipy import stats

    from fedhar.stats import paired_difference

    a = pd.Series([0.91, 0.95, 0.93, 0.96, 0.92])
    b = pd.Series([0.90, 0.95, 0.91, 0.94, 0.93])
    d = paired_difference(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert d.n == 5 and abs(d.low - ci.low) < 1e-12 and abs(d.high - ci.high) < 1e-12
    assert d.verdict.startswith("inconclusive (MDD ")
    assert paired_difference(a, a - 0.01).verdict == "difference"


def test_few_label_probes_are_paired_with_the_control_per_labelled_share():
    base = dict(held_out="uci-har", trainable_params=10, total_params=100, frozen_bytes=1, state_bytes=1,
                sec_per_epoch=1.0, macro_f1=0.5, rank=0, mode="probe")
    out = []
    for seed in range(3):
        for share, none, other in ((0.1, 0.80, 0.86), (0.3, 0.87, 0.90)):
            out.append({**base, "train_fraction": share, "backbone_kind": "none", "pretrained_on": "none",
                        "seed": seed, "accuracy": none + seed / 100})
            out.append({**base, "train_fraction": share, "backbone_kind": "other", "pretrained_on": "usc-had",
                        "seed": seed, "accuracy": other + seed / 100})
    text = comparison(pd.DataFrame(out))
    assert "| 10% | 0.810 ± 0.010 (n=3) | 0.870 ± 0.010 (n=3) | +6.0 pts [+6.0, +6.0] (n=3) (difference) |" in text
    assert "| 30% | 0.880 ± 0.010 (n=3) | 0.910 ± 0.010 (n=3) | +3.0 pts [+3.0, +3.0] (n=3) (difference) |" in text
    # the 70% pretraining table lists no backbone that only has few-label rows
    assert "### uci-har held out (cpu)\n\n| backbone" not in text


def test_a_study_without_the_random_init_control_has_no_empty_pretraining_heading():
    text = comparison(rows(), "results/lodo/three_datasets/finetune")
    assert "## Pretraining, tested" not in text  # no `none` rows: nothing to test pretraining against
    assert "`python -m fedhar.lodo_report results/lodo/three_datasets/finetune`" in text  # the folder actually read


def test_a_sub_folder_with_its_own_report_is_another_study_and_is_not_read(tmp_path):
    from fedhar.lodo_report import main

    rows().to_csv(tmp_path / "runs.csv", index=False)
    study = tmp_path / "three_datasets" / "finetune"
    study.mkdir(parents=True)
    rows().to_csv(study / "runs.csv", index=False)  # the same seeds again: read together, a repeated-seed error
    assert main([str(tmp_path)]) == 2
    (study / "comparison.md").write_text("its own report\n")
    assert main([str(tmp_path)]) == 0
    assert f"Not read here: `{study}`" in (tmp_path / "comparison.md").read_text()
