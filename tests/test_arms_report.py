"""The like-for-like report reads the runs' own tables (no training here)."""

import json

import pandas as pd

from fedhar.arms_report import collect, markdown


def write_run(folder, name, arm, seed, acc, strategy="fedavg"):
    run = folder / "runs" / name
    run.mkdir(parents=True)
    cfg = {"data": "uci-har", "arm": arm, "strategy": strategy, "seed": seed, "rounds": 2}
    (run / "config.json").write_text(json.dumps({"config": cfg, "clients": ["s1", "s2"]}))
    if arm == "local":  # two clients, two server sets of different sizes: weighted per client
        rows = [{"client": c, "phase": "server", "set": s, "accuracy": a, "macro_f1": a, "num_examples": n}
                for c, pairs in (("s1", ((acc, 300, "server:a"), (acc, 100, "server:b"))),
                                 ("s2", ((acc - 0.1, 300, "server:a"), (acc + 0.1, 100, "server:b"))))
                for a, n, s in pairs]
        rows.append({"client": "s1", "phase": "local", "set": "own test", "accuracy": 1.0, "macro_f1": 1.0, "num_examples": 5})
        pd.DataFrame(rows).to_csv(run / "local.csv", index=False)
    else:
        rows = [{"round": r, "phase": "server", "client": "server:uci-har", "status": "ok", "accuracy": acc - (2 - r) * 0.1,
                 "macro_f1": acc, "num_examples": 100} for r in (1, 2)]
        pd.DataFrame(rows).to_csv(run / "clients.csv", index=False)


def test_arms_are_paired_by_seed_and_local_is_the_mean_of_the_clients(tmp_path):
    for seed, (c, f, loc) in enumerate(((0.95, 0.93, 0.80), (0.96, 0.93, 0.82), (0.94, 0.92, 0.81))):
        write_run(tmp_path, f"cen-{seed}", "centralised", seed, c)
        write_run(tmp_path, f"fed-{seed}", "federated", seed, f)
        write_run(tmp_path, f"loc-{seed}", "local", seed, loc)
    (tmp_path / "runs" / "half-done").mkdir()  # no tables yet: listed, not counted
    (tmp_path / "runs" / "half-done" / "config.json").write_text(json.dumps(
        {"config": {"data": "uci-har", "arm": "local", "strategy": "fedavg", "seed": 3, "rounds": 2}, "clients": ["s1"]}))
    scores, unfinished = collect(tmp_path)
    local = scores[scores["arm"] == "local"].set_index("seed")["accuracy"]
    # client s1: 0.80 on both sets; client s2: (0.70 x 300 + 0.90 x 100) / 400 = 0.75; mean 0.775
    assert abs(local[0] - 0.775) < 1e-12
    assert unfinished and "half-done" in unfinished[0]
    text = markdown(scores, unfinished)
    assert "| centralised | 3 | 0.950 ± 0.010 (n=3) |" in text
    assert "| centralised - federated (fedavg) | +2.3 pts [" in text and "(difference)" in text
    assert "| federated (fedavg) - local | +14.2 pts [" in text


def test_each_rule_is_paired_with_fedavg(tmp_path):
    for seed, (avg, ffa) in enumerate(((0.93, 0.95), (0.92, 0.95), (0.94, 0.95))):
        write_run(tmp_path, f"fedavg-{seed}", "federated", seed, avg)
        write_run(tmp_path, f"ffa-{seed}", "federated", seed, ffa, strategy="ffa")
    text = markdown(*collect(tmp_path))
    assert "| federated (ffa) - federated (fedavg) | +2.0 pts [" in text
    assert "federated (fedavg) - federated (fedavg)" not in text
