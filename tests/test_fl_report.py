"""results/fl's generator: federated server rows beside the matching centralised LODO row."""

import json

import pandas as pd
import pytest

from simulations.config import FLConfig
from simulations.fl_report import command_of, main


def _run(root, name, strategy, server_acc, rounds=2):
    run = root / "runs" / name
    run.mkdir(parents=True)
    cfg = FLConfig(data="uci-har", partition="subject", server_test_fraction=0.3, rank=16,
                   strategy=strategy, rounds=rounds).settings()
    (run / "config.json").write_text(json.dumps({"config": cfg, "clients": ["s1", "s2", "s3"]}))
    pd.DataFrame([dict(round=r, accuracy=0.8, bytes_up=100, bytes_down=300) for r in (1, 2)]).to_csv(
        run / "rounds.csv", index=False)
    pd.DataFrame([
        dict(round=2, phase="train", status="ok", client="s1"),
        dict(round=2, phase="train", status="failed", client="s2"),
        dict(round=1, phase="server", status="ok", client="server:uci-har", accuracy=0.5, macro_f1=0.5),
        dict(round=2, phase="server", status="ok", client="server:uci-har", accuracy=server_acc, macro_f1=0.9),
    ]).to_csv(run / "clients.csv", index=False)


def test_report_puts_the_last_server_round_beside_the_same_lodo_run(tmp_path):
    fl, lodo = tmp_path / "fl", tmp_path / "lodo"
    _run(fl, "a", "fedavg", 0.93)
    _run(fl, "b", "ffa", 0.90, rounds=3)  # planned 3, finished 2: listed as unfinished
    (fl / "runs" / "c").mkdir()
    (fl / "runs" / "c" / "config.json").write_text("{}")  # still running: no rounds.csv
    (lodo / "uci-har").mkdir(parents=True)
    pd.DataFrame([
        dict(held_out="uci-har", mode="lora", rank=16, train_fraction=0.7, split="random", seed=0,
             accuracy=0.96, macro_f1=0.96),
        dict(held_out="uci-har", mode="lora", rank=16, train_fraction=0.5, split="random", seed=0,
             accuracy=0.50, macro_f1=0.50),
        dict(held_out="uci-har", mode="lora", rank=8, train_fraction=0.7, split="random", seed=0,
             accuracy=0.10, macro_f1=0.10),
    ]).to_csv(lodo / "uci-har" / "runs.csv", index=False)
    assert main([str(fl), "--lodo", str(lodo)]) == 0
    table = pd.read_csv(fl / "comparison.csv").set_index("strategy")
    assert table.loc["fedavg", "fl_accuracy"] == 0.93 and table.loc["fedavg", "central_accuracy"] == 0.96
    assert table.loc["fedavg", "gap_points"] == pytest.approx(-3.0)
    assert table.loc["fedavg", "failed"] == 1
    assert table.loc["fedavg", "mb_total"] == pytest.approx(800 / 2**20)
    text = (fl / "comparison.md").read_text()
    assert "b (2/3 rounds), c" in text and "--strategy ffa" in text


def test_command_of_lists_only_what_differs_from_the_defaults():
    cfg = FLConfig(rank=16, resume=True, out_dir="x").settings()
    assert command_of(cfg) == "fedhar fl --rank 16"


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert main([str(tmp_path)]) == 2  # one line, no traceback
    err = capsys.readouterr().err.strip()
    assert err.startswith("fl_report: error: ") and "no run directories" in err and len(err.splitlines()) == 1
