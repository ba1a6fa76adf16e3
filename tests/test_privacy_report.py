"""simulations/privacy_report.py: one row per finished run, the gap to the same rule without DP."""

import json
import math

import pandas as pd

from simulations.privacy_report import collect, main


def fake_run(runs, name, strategy, seed, eps, accuracy, done=True):
    run = runs / name
    run.mkdir(parents=True)
    privacy = {"central_dp": {"noise_multiplier": 1.5}} if eps else {"central_dp": None}
    (run / "config.json").write_text(json.dumps({"config": {"strategy": strategy, "fraction-train": 1.0, "seed": seed,
                                                            "dp-epsilon": eps, "data": "synthetic"},
                                                 "clients": ["a", "b"], "privacy": privacy}))
    rows = {"round": [1, 2], "accuracy": [0.1, accuracy], "server_accuracy": [math.nan, math.nan]}
    if eps:
        rows.update(dp_epsilon=[eps / 2, eps], dp_clipped=[1.0, 0.5])
    pd.DataFrame(rows).to_csv(run / "rounds.csv", index=False)
    if done:
        (run / "done").touch()


def test_the_table_pairs_each_budget_with_the_same_seeds_without_dp(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, (free, private) in enumerate([(0.90, 0.80), (0.92, 0.86)]):
        fake_run(runs, f"ffa-inf-s{seed}", "ffa", seed, 0.0, free)
        fake_run(runs, f"ffa-8-s{seed}", "ffa", seed, 8.0, private)
    fake_run(runs, "ffa-4-s0", "ffa", 0, 4.0, 0.5, done=False)  # unfinished: left out
    table = collect(runs)
    assert len(table) == 4 and set(table["target_epsilon"]) == {8.0, math.inf}
    assert (table["clients"] == 2).all() and (table["rounds"] == 2).all()
    assert (table[table["target_epsilon"] == 8.0]["epsilon_spent"] == 8.0).all()
    assert table["scored_on"].iloc[0] == "clients' test windows"  # no server test subjects in these runs
    assert main([str(runs), str(tmp_path / "out")]) == 0
    md = (tmp_path / "out.md").read_text()
    # gaps -10 and -6 points: mean -8, t interval -8 ± 12.706 * 2 / sqrt 2 -> [-33.4, +17.4]
    assert "| ffa | 1.0 | 8 | 0.830 ± 0.042 (n=2) | -8.0 pts [-33.4, +17.4] (n=2) (inconclusive" in md
    assert "| not shown | 1.5 | 0.50 |" in md and "Holm over 1" in md
    assert (tmp_path / "out.png").stat().st_size > 0 and (tmp_path / "out.csv").exists()


def test_a_budget_clearly_costing_more_than_two_points_says_no_and_another_batch_is_refused(tmp_path):
    runs = tmp_path / "runs"
    for seed, (free, private) in enumerate([(0.90, 0.50), (0.92, 0.51), (0.91, 0.49)]):
        fake_run(runs, f"fedavg-inf-s{seed}", "fedavg", seed, 0.0, free)
        fake_run(runs, f"fedavg-8-s{seed}", "fedavg", seed, 8.0, private)
    meta = json.loads((runs / "fedavg-8-s2" / "config.json").read_text())
    meta["code"] = "another-commit"
    (runs / "fedavg-8-s2" / "config.json").write_text(json.dumps(meta))
    assert main([str(runs), str(tmp_path / "out")]) == 0
    md = (tmp_path / "out.md").read_text()
    assert "| fedavg | 1.0 | 8 | " in md and "(n=2)" in md and "| no |" in md
    assert "## Pairs refused: not one batch" in md and "seed 2:" in md and "another-commit" in md
