"""The two-dataset report: per-dataset server accuracy and drift grouped by the clients' dataset."""

import json

import pandas as pd
import pytest

from fedhar.errors import FedharError
from simulations.two_datasets_report import client_drift, report, run_summary


def fake_run(folder, partition, clients, seed=0, accuracy=(0.9, 0.7)):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": {"partition": partition, "strategy": "fedavg", "seed": seed}}))
    pd.DataFrame({"round": [1, 2], "server_accuracy": [0.5, 0.8], "server_macro_f1": [0.4, 0.75],
                  "accuracy": [0.6, 0.85]}).to_csv(folder / "rounds.csv", index=False)
    pd.DataFrame({"client": ["server:uci-har", "server:usc-had", "server:uci-har", "server:usc-had"],
                  "round": [1, 1, 2, 2], "accuracy": [0.1, 0.1, *accuracy]}).to_csv(folder / "clients.csv", index=False)
    rows = [{"round": r, "client": c, "layer": f"l{layer}", "part": part, "rel_drift": 0.5 if c.startswith("uci") else 1.5,
             "cosine": 0.8} for r in (1, 2) for c in clients for layer in (0, 1) for part in ("BA", "A")]
    pd.DataFrame(rows).assign(rel_drift=lambda d: d["rel_drift"].where(d["part"] == "BA", 99.0)).to_csv(
        folder / "drift.csv", index=False)
    (folder / "done").touch()
    return folder


def test_scores_per_dataset_come_from_the_last_round(tmp_path):
    run = fake_run(tmp_path / "a", "dataset", ["uci-har/all", "usc-had/all"])
    row = run_summary(run)
    assert row["server_accuracy"] == 0.8 and row["accuracy uci-har"] == 0.9 and row["accuracy usc-had"] == 0.7


def test_drift_is_grouped_by_the_clients_dataset_and_reads_only_ba(tmp_path):
    run = fake_run(tmp_path / "b", "subject", ["uci-har/1", "uci-har/2", "usc-had/1"])
    d = client_drift(run)
    assert set(d["dataset"]) == {"uci-har", "usc-had"} and d["rel_drift"].max() == 1.5  # part A (99) left out
    text = report(tmp_path)
    assert "| one per subject | uci-har | 2 | 0.50 | 0.80 |" in text
    assert "| one per subject | usc-had | 1 | 1.50 | 0.80 |" in text
    (tmp_path / "unfinished").mkdir()  # no done marker: not read
    assert report(tmp_path) == text


def test_the_local_arm_scores_each_dataset_alone_on_its_own_test_subjects(tmp_path):
    run = tmp_path / "local"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"partition": "dataset", "strategy": "fedavg", "seed": 0,
                                                            "arm": "local", "rounds": 2}}))
    rows = [{"client": c, "phase": "server", "set": f"server:{d}", "accuracy": a, "macro_f1": a, "num_examples": n}
            for c, d, a, n in (("uci-har", "uci-har", 0.9, 100), ("uci-har", "usc-had", 0.2, 300),
                               ("usc-had", "uci-har", 0.3, 100), ("usc-had", "usc-had", 0.7, 300))]
    pd.DataFrame(rows).to_csv(run / "local.csv", index=False)
    own = run_summary(run, own_only=True)  # each dataset's model on its own dataset only: told the dataset
    assert own["accuracy uci-har"] == 0.9 and own["accuracy usc-had"] == 0.7
    assert abs(own["server_accuracy"] - (0.9 + 0.7) / 2) < 1e-12  # the mean over the two local models
    task = run_summary(run)  # the global task: every model on all the test windows (12 classes)
    assert abs(task["accuracy uci-har"] - (0.9 + 0.3) / 2) < 1e-12 and abs(task["accuracy usc-had"] - (0.2 + 0.7) / 2) < 1e-12
    uci_model, usc_model = (0.9 * 100 + 0.2 * 300) / 400, (0.3 * 100 + 0.7 * 300) / 400
    assert abs(task["server_accuracy"] - (uci_model + usc_model) / 2) < 1e-12
    (run / "done").touch()
    text = report(tmp_path)
    assert f"| dataset | local (each client alone), all test windows | 1 | {(uci_model + usc_model) / 2:.3f} (n=1) |" in text
    assert "| dataset | local (each client alone), own dataset only | 1 | 0.800 (n=1) |" in text


def test_rules_are_paired_with_fedavg_by_seed(tmp_path):
    for seed, (base, rule) in enumerate([(0.80, 0.83), (0.70, 0.74), (0.90, 0.92)]):
        for strategy, acc in (("fedavg", base), ("fedprox", rule)):
            run = fake_run(tmp_path / f"{strategy}-s{seed}", "dataset", ["uci-har/all", "usc-had/all"], seed=seed)
            cfg = json.loads((run / "config.json").read_text())
            cfg["config"]["strategy"] = strategy
            (run / "config.json").write_text(json.dumps(cfg))
            pd.DataFrame({"round": [1, 2], "server_accuracy": [0.5, acc], "server_macro_f1": [0.4, acc],
                          "accuracy": [0.6, acc]}).to_csv(run / "rounds.csv", index=False)
    text = report(tmp_path)
    paired = text.split("## Paired differences")[1]
    row = next(line for line in paired.splitlines() if line.startswith("| dataset | fedprox |"))
    assert "+3.0 pts [" in row and "(n=3) (difference)" in row  # differences 3, 4, 2 points: mean 3, interval above 0
    fake_run(tmp_path / "copy-of-fedavg-s0", "dataset", ["uci-har/all", "usc-had/all"])  # the same run twice
    with pytest.raises(FedharError, match="copy-of-fedavg-s0 and .*fedavg-s0"):
        report(tmp_path)
