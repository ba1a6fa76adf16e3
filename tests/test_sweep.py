"""`fedhar sweep`: sweep files checked against FLConfig, stable trial ids, trials as Ray tasks,
resumable, one tidy results table."""

import json
from pathlib import Path

import pandas as pd
import pytest

from fedhar.cli import main
from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.sweep import load_sweep, plan, results_table, run_sweep, run_trial, trial_id, write_marker

TINY = Path(__file__).resolve().parents[1] / "simulations" / "sweeps" / "tiny.toml"
HEADLINE = TINY.with_name("headline.toml")


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_trial_ids_are_stable_and_name_the_resolved_config(tmp_path):
    sweep = load_sweep(TINY)
    ids = [t.trial_id for t in sweep.trials(tmp_path / "a")]
    assert ids == [t.trial_id for t in sweep.trials(tmp_path / "b")]  # not tied to the folder
    assert len(set(ids)) == 2
    # pinned: a change of the id recipe would orphan every finished trial of every sweep
    assert trial_id(FLConfig()) == "44136fa355"
    assert trial_id(FLConfig(strategy="ffa", rounds=2)) == "b61c2ddfeb"
    # the same run however it is written: out_dir/resume aside, defaults spelled out or not
    assert trial_id(FLConfig(rank=4)) == trial_id(FLConfig(rank=4, out_dir="x", resume=True))
    assert trial_id(FLConfig(rank=8, strategy="fedavg")) == trial_id(FLConfig())
    assert trial_id(FLConfig(rank=4)) != trial_id(FLConfig(rank=16))
    trial = sweep.trials(tmp_path)[0]
    assert trial.out_dir == (tmp_path / "trials" / trial.trial_id).resolve()
    assert trial.values == {"strategy": "fedavg"} and trial.cfg.rounds == 2 and trial.cfg.synthetic_domains == 2


def test_grid_is_the_cartesian_product_over_the_base(tmp_path):
    path = write(tmp_path, '[base]\nrounds = 2\nfraction-train = 1\n[grid]\nstrategy = ["fedavg", "ffa", "fedsa"]\n'
                           'rank = [4, 16]\n"local-epochs" = [1]\n')
    sweep = load_sweep(path)
    trials = sweep.trials(tmp_path / "s")
    assert len(trials) == 6 and sweep.settings.name == "bad" and sweep.settings.cpus_per_trial == 1
    assert {(t.cfg.strategy, t.cfg.rank) for t in trials} == {(s, r) for s in ("fedavg", "ffa", "fedsa") for r in (4, 16)}
    assert all(t.cfg.rounds == 2 and t.cfg.fraction_train == 1.0 and t.cfg.local_epochs == 1 for t in trials)
    assert sweep.config_columns()[:3] == ["data", "partition", "num_clients"]
    assert {"rank", "local_epochs", "strategy", "rounds", "fraction_train"} <= set(sweep.config_columns())


def test_headline_sweeps_are_valid():
    def trials(name):
        return load_sweep(HEADLINE.with_name(name)).trials(Path("/nonexistent"))

    strategies = trials("headline.toml")
    assert len(strategies) == 10
    assert {t.cfg.strategy for t in strategies} == {"fedavg", "ffa", "fedsa", "fedex", "flora"}
    assert {t.cfg.local_epochs for t in strategies} == {1, 3}
    precision = trials("headline_precision.toml")
    assert {(t.cfg.mode, t.cfg.rank) for t in precision} == {(m, r) for m in ("lora", "qlora") for r in (4, 16)}
    assert {t.cfg.fraction_train for t in trials("headline_clients.toml")} == {0.15, 1.0}


@pytest.mark.parametrize("text, key, line, says", [
    ('[base]\nrounds = 2\n\n[grid]\nstrategy = ["fedavg"]\nrnak = [4, 8]\n', "rnak", 6, "did you mean 'rank'"),
    ('[base]\nrounds = 2\nbogus-knob = 1\n', "bogus-knob", 3, "unknown key"),
    ('[sweep]\ncpus = 2\n', "cpus", 2, "unknown key"),
    ('[base]\nrank = "four"\n', "rank", 2, "expected int"),
    ('[grid]\nrank = 4\n', "rank", 2, "non-empty list"),
    ('[grid]\nrank = [4, 4]\n', "rank", 2, "twice"),
    ('[base]\nrank = 4\n[grid]\nrank = [8]\n', "rank", 4, "both [base] and [grid]"),
    ('[base]\nout_dir = "x"\n', "out_dir", 2, "the sweep sets it"),
    ('[grids]\nrank = [4]\n', "grids", 1, "unknown table"),
    ('[grid]\nmode = ["lora", "sparse"]\n', "mode", None, "unknown mode 'sparse'"),
    ('[grid\nrank = [4]\n', "line 1", None, "not a valid TOML"),
])
def test_a_bad_sweep_file_names_the_file_the_key_and_the_line(tmp_path, capsys, text, key, line, says):
    path = write(tmp_path, text)
    with pytest.raises(FedharError) as err:
        load_sweep(path).trials(tmp_path / "s")
    message = str(err.value)
    assert str(path) in message and key in message and says in message
    if line:
        assert f"{path}:{line}:" in message
    # the CLI: one line, exit status 2
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("fedhar: error: ")


def test_dry_run_lists_the_trials_and_runs_nothing(tmp_path, capsys):
    assert main(["sweep", str(TINY), "--out-dir", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for trial in load_sweep(TINY).trials(tmp_path / "s"):
        assert trial.trial_id in out
    assert "2 pending" in out and not (tmp_path / "s" / "trials").exists()


def test_a_failing_trial_reports_its_error_and_keeps_its_log(tmp_path):
    cfg = FLConfig(data="pamap2", data_dir=str(tmp_path / "no-data"), backbone=str(tmp_path / "mae.safetensors"),
                   out_dir=str(tmp_path / "t"))
    summary = run_trial(cfg)
    assert summary["status"] == "failed" and "'pamap2' not found" in summary["error"]
    # seconds is rounded to 0.1 s: a trial failing on cached data can take 0.0
    assert summary["seconds"] >= 0 and summary["cpu_seconds"] > 0 and summary["peak_rss_mb"] > 0 and summary["hostname"]
    assert "Traceback" in (tmp_path / "t" / "trial.log").read_text()


def test_results_table_has_a_row_per_trial_and_round_and_one_per_failed_trial(tmp_path):
    sweep = load_sweep(TINY)
    done, failed = sweep.trials(tmp_path)
    rounds = "round,clients_trained,accuracy\n1,2,0.5\n2,2,0.75\n"
    where = {"node": "abc", "hostname": "h", "node_ip": "10.0.0.1", "peak_rss_mb": 700.0, "clients": 2}
    write_marker(done, {"status": "ok", "error": "", "seconds": 3.0, "cpu_seconds": 2.5, "rounds_csv": rounds, **where})
    assert (done.out_dir / "rounds.csv").read_text() == rounds  # a trial that ran on another node's disk
    write_marker(failed, {"status": "failed", "error": "ValueError: boom", "seconds": 1.0, **where, "clients": None})
    assert [s for _, s in plan(sweep, tmp_path)] == ["done", "failed"]
    table = results_table(sweep, sweep.trials(tmp_path))
    assert list(table.columns[:3]) == ["trial_id", "status", "data"]
    assert list(table.columns[-9:]) == ["seconds", "cpu_seconds", "node", "hostname", "node_ip", "peak_rss_mb", "clients",
                                        "resumed", "error"]
    assert list(table["status"]) == ["ok", "ok", "failed"] and list(table["strategy"]) == ["fedavg", "fedavg", "ffa"]
    assert str(table["round"].dtype) == "Int64" and table["round"].isna().sum() == 1
    assert table["accuracy"].tolist()[:2] == [0.5, 0.75] and table["error"].iloc[2] == "ValueError: boom"


@pytest.mark.slow
def test_tiny_sweep_on_ray_writes_one_table_and_resumes(tmp_path, capsys):
    sweep, out = load_sweep(TINY), tmp_path / "sweep"
    lines = []
    outcome = run_sweep(sweep, out, command="test", log=lines.append)
    assert (outcome.trials, outcome.ran, outcome.ok, outcome.skipped) == (2, 2, 2, 0), lines
    assert sum("ETA" in line or "remaining 0" in line for line in lines) == 2  # a progress line per trial

    results = pd.read_csv(out / "results.csv")
    trials = sweep.trials(out)
    assert len(results) == 2 * 2  # (trial, round)
    assert set(results["trial_id"]) == {t.trial_id for t in trials}
    assert sorted(results["strategy"].unique()) == ["fedavg", "ffa"]
    for column in ("trial_id", "status", "strategy", "mode", "rank", "local_epochs", "seed", "rounds",
                   "synthetic_domains", "round", "accuracy", "macro_f1", "train_loss", "bytes_up",
                   "seconds", "node", "hostname", "node_ip", "peak_rss_mb"):
        assert column in results, column
    assert (results["status"] == "ok").all() and (results["rounds"] == 2).all()
    assert (results["node"].str.len() > 0).all() and (results["peak_rss_mb"] > 50).all()
    assert (results["clients"] == 2).all()
    assert json.loads((out / "sweep.json").read_text())["content"] == TINY.read_text()

    # again: both trials are recognised as done, nothing runs, no file of theirs changes
    stamps = {p: p.stat().st_mtime_ns for t in trials for p in t.out_dir.iterdir()}
    again = run_sweep(sweep, out, log=lines.append)
    assert (again.ran, again.skipped) == (0, 2)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(json.loads((out / "sweep.json").read_text())["history"]) == 2
    assert main(["sweep", str(TINY), "--out-dir", str(out), "--dry-run"]) == 0
    assert "2 done" in capsys.readouterr().out

    # a trial cut short (no marker, a checkpoint) resumes from its checkpoint; only it runs
    cut = trials[1]
    (cut.out_dir / "trial.json").unlink()
    (cut.out_dir / "rounds.csv").unlink()
    assert [s for _, s in plan(sweep, out)] == ["done", "partial"]
    third = run_sweep(sweep, out, log=lines.append)
    assert (third.ran, third.skipped, third.ok) == (1, 1, 1)
    assert json.loads((cut.out_dir / "trial.json").read_text())["resumed"] is True
    assert len(pd.read_csv(out / "results.csv")) == 4


@pytest.mark.slow
def test_trials_land_on_every_node_of_a_cluster(tmp_path):
    """--address: an existing cluster (here two Ray nodes of 1 CPU on this machine)."""
    from ray.cluster_utils import Cluster

    nodes = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**nodes, "include_dashboard": False})
    try:
        cluster.add_node(**nodes)
        cluster.wait_for_nodes()
        lines = []
        outcome = run_sweep(load_sweep(TINY), tmp_path / "sweep", address=cluster.address, log=lines.append)
    finally:
        cluster.shutdown()
    assert (outcome.ran, outcome.ok) == (2, 2), lines
    assert "on 2 node(s)" in lines[1]
    node_of = outcome.results.groupby("trial_id")["node"].first()
    assert node_of.nunique() == 2  # one trial per node: each node holds one 1-CPU trial
