"""The tuned-vs-untuned ranking: last rounds only, paired by seed, ranks by mean."""

import pandas as pd
import pytest

from simulations import fair_rules_report as report


def _rows(experiment, strategy, finals, first=0.1):
    """Two rounds per seed; round 2 holds the final accuracy, round 1 a decoy."""
    rows = []
    for seed, acc in enumerate(finals):
        for rnd, value in ((1, first), (2, acc)):
            rows.append({"experiment": experiment, "trial_id": f"{experiment}-{strategy}-{seed}", "status": "ok",
                         "strategy": strategy, "seed": seed, "round": rnd, "server_accuracy": value})
    return rows


def test_tuning_gain_is_paired_by_seed_and_ranks_follow_the_means(tmp_path):
    tuned = pd.DataFrame(_rows("fedavg", "fedavg", [0.5, 0.5, 0.5])  # a tuning trial: not a confirmation
                         + _rows("confirm", "fedavg", [0.90, 0.92, 0.94])
                         + _rows("confirm", "fedadam", [0.95, 0.96, 0.97]))
    untuned = pd.DataFrame(_rows("all", "fedavg", [0.89, 0.91, 0.93]) + _rows("all", "fedadam", [0.60, 0.70, 0.80]))
    df = report.tuned_vs_untuned(tuned, untuned).set_index("strategy")

    assert df.loc["fedadam", "rank_tuned"] == 1 and df.loc["fedavg", "rank_tuned"] == 2
    assert df.loc["fedavg", "rank_untuned"] == 1 and df.loc["fedadam", "rank_untuned"] == 2
    # fedavg gains exactly 1 point on every seed: a zero-width interval at +1.0
    assert df.loc["fedavg", "tuned_minus_untuned"] == "+1.0 pts [+1.0, +1.0] (n=3) (difference)"
    assert df.loc["fedadam", "tuned_mean"] == pytest.approx(0.96)
    assert df.loc["fedadam", "gain_verdict"] == "difference"  # +35, +26, +17 points: p .038, Holm step 2 of 2
    assert df.loc["fedavg", "tuned_vs_fedavg"] == "(baseline)"

    (tmp_path / "t").mkdir(), (tmp_path / "u").mkdir()
    tuned.to_csv(tmp_path / "t" / "results.csv", index=False)
    untuned.to_csv(tmp_path / "u" / "results.csv", index=False)
    assert report.main([str(tmp_path / "t"), str(tmp_path / "u")]) == 0
    assert "| fedadam | 1 |" in (tmp_path / "t" / "tuned_vs_untuned.md").read_text()


def test_a_missing_sweep_is_named(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope"), str(tmp_path)]) == 1
    assert "nope/results.csv: no such file" in capsys.readouterr().err
