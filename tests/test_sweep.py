"""`fedhar sweep`: sweep files checked against FLConfig, Ray Tune search spaces, the trial
function, the tidy table, the confirmation stage, and a sweep killed and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fedhar.cli import main
from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.sweep import TRIAL_COLUMNS, load_sweep, trial
from simulations.sweep_confirm import comparison_table, select_best
from simulations.sweep_run import _params, results_table

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "simulations" / "sweeps"
TINY = SWEEPS / "tiny.toml"
RULES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "ffa", "fedsa", "fedex", "flora", "hetlora")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def cache(monkeypatch, shared_cache):
    # one cache for the module: the tiny backbone is pretrained once, then reused
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(shared_cache))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")


def write(tmp_path, text: str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- sweep files


def test_the_committed_sweep_files_are_valid():
    assert [e.name for e in load_sweep(TINY).experiments()] == ["all"]
    headline = load_sweep(SWEEPS / "headline.toml").experiments()[0]
    assert headline.size(1) == 10 and set(headline.grid["strategy"]) == {"fedavg", "ffa", "fedsa", "fedex", "flora"}
    assert load_sweep(SWEEPS / "headline_precision.toml").experiments()[0].size(1) == 4
    assert load_sweep(SWEEPS / "headline_clients.toml").experiments()[0].grid["fraction_train"] == [0.15, 1.0]

    for name, samples, rules in (("fair_rules.toml", 6, RULES + ("flexlora",)), ("fair_rules_smoke.toml", 2, RULES)):
        sweep = load_sweep(SWEEPS / name)
        exps = {e.name: e for e in sweep.experiments()}
        assert tuple(exps) == rules  # one experiment per rule, the same budget each
        # each draw at every confirmation seed: each seed is tuned on its own validation subjects
        assert {e.size(sweep.settings.num_samples) for e in exps.values()} == {samples * len(sweep.confirm.seeds)}
        assert all("lr" in e.search for e in exps.values())
        assert set(exps["fedprox"].search) == {"lr", "proximal_mu"}
        assert set(exps["fedavgm"].search) == {"lr", "server_momentum"}
        for rule in ("fedadam", "fedyogi", "fedadagrad"):
            assert set(exps[rule].search) == {"lr", "server_lr"}
        assert set(exps["fedavg"].search) == {"lr"} and exps["fedavg"].base["strategy"] == "fedavg"
        # selected on validation subjects, confirmed on the test subjects with >= 3 seeds (2 at smoke scale)
        assert sweep.base["server_val_fraction"] > 0 and sweep.base["server_test_fraction"] > 0
        assert sweep.confirm.set == {"server_val_fraction": 0.0} and sweep.confirm.baseline == "fedavg"
        assert sweep.settings.metric == sweep.confirm.metric == "server_accuracy"
        assert len(sweep.confirm.seeds) >= 3
    assert load_sweep(SWEEPS / "fair_rules.toml").base["data"] == "uci-har"

    # the untuned control: the same rules, protocol and seeds as the tuned rules' confirmation
    tuned, untuned = load_sweep(SWEEPS / "fair_rules.toml"), load_sweep(SWEEPS / "fair_rules_untuned.toml")
    (control,) = untuned.experiments()
    assert control.grid["strategy"] == [e.name for e in tuned.experiments()]
    assert tuple(control.grid["seed"]) == tuple(tuned.confirm.seeds) and not control.search
    fixed = {"lr", "proximal_mu", "server_lr", "server_momentum"}
    assert {k: v for k, v in untuned.base.items() if k not in fixed} == {
        **{k: v for k, v in tuned.base.items() if k != "seed"}, **tuned.confirm.set}


def test_grid_and_search_become_a_tune_param_space(tmp_path):
    from ray import tune
    from ray.tune.search.sample import Categorical, Float

    path = write(tmp_path, '[sweep]\nnum_samples = 3\nseed = 7\n[base]\nrounds = 2\nfraction-train = 1\n'
                           '[grid]\nstrategy = ["fedavg", "ffa"]\n"local-epochs" = [1, 2]\n'
                           '[search]\nlr = { loguniform = [1e-4, 1e-2] }\nrank = { choice = [4, 8] }\n'
                           'server_momentum = { uniform = [0, 0.5] }\n')
    sweep = load_sweep(path)
    (exp,) = sweep.experiments()
    assert exp.size(3) == 2 * 2 * 3 and sweep.settings.seed == 7 and sweep.settings.name == "bad"
    space = exp.param_space()
    assert space["rounds"] == 2 and space["fraction_train"] == 1.0
    assert space["strategy"] == tune.grid_search(["fedavg", "ffa"])
    assert space["local_epochs"] == tune.grid_search([1, 2])
    assert isinstance(space["lr"], Float) and (space["lr"].lower, space["lr"].upper) == (1e-4, 1e-2)
    assert "LogUniform" in type(space["lr"].sampler).__name__
    assert isinstance(space["rank"], Categorical) and space["rank"].categories == [4, 8]
    assert type(space["server_momentum"].sampler).__name__.strip("_") == "Uniform"
    # the table's config columns: the usual ones and whatever the file varies
    assert {"lr", "rank", "server_momentum", "local_epochs", "strategy", "seed"} <= set(sweep.config_columns())


def test_per_strategy_search_tables_make_one_experiment_per_strategy(tmp_path):
    path = write(tmp_path, '[base]\nrounds = 2\n[grid]\nstrategy = ["fedavg", "fedprox"]\nseed = [0, 1]\n'
                           '[search]\nlr = { loguniform = [1e-4, 1e-2] }\n'
                           '[search.fedprox]\nproximal_mu = { loguniform = [1e-3, 1.0] }\n')
    fedavg, fedprox = load_sweep(path).experiments()
    assert (fedavg.name, fedprox.name) == ("fedavg", "fedprox")
    assert fedavg.base == {"rounds": 2, "strategy": "fedavg"} and fedavg.grid == {"seed": [0, 1]}
    assert set(fedavg.search) == {"lr"} and set(fedprox.search) == {"lr", "proximal_mu"}
    assert fedavg.size(5) == fedprox.size(5) == 10


def test_max_concurrent_reaches_the_grid_generator(tmp_path):
    """Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator passed in
    (it only warns), so the limit must be the generator's own: else trials overlap."""
    from simulations.sweep_run import tune_config

    path = write(tmp_path, '[sweep]\nmax_concurrent = 1\n[base]\nrounds = 1\n[grid]\nlr = [0.1, 0.2]\n', "g.toml")
    sweep = load_sweep(path)
    (exp,) = sweep.experiments()
    config = tune_config(sweep, exp, "fifo", 1, 1)
    assert config.search_alg.max_concurrent == 1 and config.max_concurrent_trials is None
    assert tune_config(sweep, exp, "fifo", 1, 0).search_alg.max_concurrent == 0  # 0: no limit


def test_optuna_draws_are_seeded_by_the_sweep_file(tmp_path):
    from simulations.sweep_run import tune_config

    def draws(seed: int) -> list[float]:
        path = write(tmp_path, f'[sweep]\nalgorithm = "optuna"\nseed = {seed}\n[base]\nrounds = 1\n'
                               '[search]\nlr = { loguniform = [1e-4, 1e-2] }\n', f"optuna{seed}.toml")
        sweep = load_sweep(path)
        (exp,) = sweep.experiments()
        search = tune_config(sweep, exp, "fifo", 3, 0).search_alg
        assert type(search).__name__ == "OptunaSearch"
        search.set_search_properties(sweep.settings.metric, sweep.settings.mode, exp.param_space())
        return [search.suggest(f"t{i}")["lr"] for i in range(3)]

    first = draws(3)
    assert first == draws(3) and first != draws(4)  # the same file draws the same trials
    assert all(1e-4 <= lr <= 1e-2 for lr in first) and len(set(first)) == 3


@pytest.mark.parametrize("text, key, line, says", [
    ('[base]\nrounds = 2\n\n[grid]\nstrategy = ["fedavg"]\nrnak = [4, 8]\n', "rnak", 6, "did you mean 'rank'"),
    ('[base]\nrounds = 2\nbogus-knob = 1\n', "bogus-knob", 3, "unknown key"),
    ('[sweep]\ncpus = 2\n', "cpus", 2, "unknown key"),
    ('[sweep]\nscheduler = "hyperband"\n', "scheduler", 2, "one of fifo, asha"),
    ('[sweep]\nengine = "ray"\n', "engine", 2, "one of inline, cohort"),
    ('[base]\nrank = "four"\n', "rank", 2, "expected int"),
    ('[grid]\nrank = 4\n', "rank", 2, "non-empty list"),
    ('[grid]\nrank = [4, 4]\n', "rank", 2, "twice"),
    ('[base]\nrank = 4\n[grid]\nrank = [8]\n', "rank", 4, "both [base] and [grid]"),
    ('[base]\nout_dir = "x"\n', "out_dir", 2, "the sweep sets it"),
    ('[grids]\nrank = [4]\n', "grids", 1, "did you mean [grid]"),
    ('[grid]\nmode = ["lora", "sparse"]\n', "mode", 2, "unknown mode 'sparse'"),
    ('[grid\nrank = [4]\n', "line 1", None, "not a valid TOML"),
    ('[search]\nlr = { logunifrom = [1e-4, 1e-2] }\n', "lr", 2, "did you mean 'loguniform'"),
    ('[search]\nlr = { loguniform = [0, 1e-2] }\n', "lr", 2, "low > 0"),
    ('[search]\nlr = [1e-4, 1e-2]\n', "lr", 2, "one distribution"),
    ('[search]\nrank = { uniform = [4, 16] }\n', "rank", 2, "use { choice"),
    ('[base]\nlr = 0.01\n[search]\nlr = { uniform = [0.1, 0.2] }\n', "lr", 4, "and in [base]"),
    ('[search]\nserver_momentum = { uniform = [0.5, 1.5] }\n', "server_momentum", 2, "server-momentum must be in"),
    ('[grid]\nstrategy = ["fedavg"]\n[search.fedprox]\nproximal_mu = { uniform = [0, 1] }\n', "fedprox", 3,
     "fedprox is not a strategy of the sweep"),
    ('[sweep]\nalgorithm = "optuna"\n[grid]\nrank = [4, 8]\n[search]\nlr = { uniform = [0.1, 0.2] }\n', "algorithm", 2,
     "optuna"),
    ('[grid]\nstrategy = ["fedavg"]\n[confirm]\nseeds = [0]\n', "seeds", 4, "2 or more"),
    ('[grid]\nstrategy = ["ffa"]\n[confirm]\nbaseline = "fedavg"\n', "baseline", 4, "not a strategy of the sweep"),
    ('[confirm]\nset = { rnak = 4 }\n', "rnak", None, "did you mean 'rank'"),
])
def test_a_bad_sweep_file_names_the_file_the_key_and_the_line(tmp_path, capsys, text, key, line, says):
    path = write(tmp_path, text)
    with pytest.raises(FedharError) as err:
        load_sweep(path)
    message = str(err.value)
    assert str(path) in message and key in message and says in message, message
    if line:
        assert f"{path}:{line}:" in message
    # the CLI: one line, exit status 2
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("fedhar: error: ")


def test_dry_run_lists_the_experiments_and_runs_nothing(tmp_path, capsys):
    assert main(["sweep", str(SWEEPS / "fair_rules_smoke.toml"), "--out-dir", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("experiment ") == 11 and "proximal_mu ~ loguniform[0.0001, 1.0]" in out
    assert "confirm: each experiment's best on seeds [0, 1, 2]" in out
    assert not (tmp_path / "s").exists()


def test_a_folder_of_the_sweep_runner_before_ray_tune_is_left_alone(tmp_path):
    from simulations.sweep_run import run_sweep

    old = tmp_path / "headline"
    (old / "trials" / "0c85c62de3").mkdir(parents=True)
    (old / "results.csv").write_text("trial_id,status\n0c85c62de3,ok\n")
    with pytest.raises(FedharError, match="runner before Ray Tune"):
        run_sweep(load_sweep(TINY), old)
    assert (old / "results.csv").read_text() == "trial_id,status\n0c85c62de3,ok\n" and not (old / "sweep.json").exists()


def test_server_val_fraction_swaps_the_test_subjects_for_validation_subjects():
    from simulations.task import federation

    base = dict(partition="subject", synthetic_domains=2, synthetic_subjects=6, server_test_fraction=0.3)
    test_run, tune_run = federation(FLConfig(**base)), federation(FLConfig(**base, server_val_fraction=0.3))
    subjects = {"test": set(test_run.server_test.subject), "val": set(tune_run.server_test.subject),
                "clients": set(tune_run.windows.subject), "all": set(test_run.windows.subject)}
    assert subjects["val"] and subjects["test"]
    assert not subjects["val"] & subjects["test"]  # validation is never the test subjects
    assert not subjects["test"] & subjects["clients"] and not subjects["val"] & subjects["clients"]
    assert subjects["val"] | subjects["clients"] == subjects["all"]  # carved from the training subjects
    assert len(tune_run.parts) < len(test_run.parts)
    with pytest.raises(FedharError, match="needs --server-test-fraction"):
        FLConfig(server_val_fraction=0.2)


# --------------------------------------------------------------------------- the trial


def test_the_trial_reports_every_round_and_never_reruns_a_finished_run(tmp_path):
    config = {"synthetic_domains": 2, "synthetic_subjects": 3, "pretrain_epochs": 1, "rounds": 2}
    reports = []
    trial(config, out_root=str(tmp_path), report=reports.append)
    assert [r["round"] for r in reports] == [1, 2]
    for r in reports:
        assert 0 <= r["accuracy"] <= 1 and r["train_loss"] > 0 and r["bytes_up"] > 0
        assert r["clients"] == 2 and r["peak_rss_mb"] > 50 and r["cpu_seconds"] > 0 and r["resumed"] is False
        assert set(TRIAL_COLUMNS) - {"error", "node_ip"} <= set(r)
    run = tmp_path / "direct" / "run"
    assert len(pd.read_csv(run / "rounds.csv")) == 2
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    again = []
    trial(config, out_root=str(tmp_path), report=again.append)  # as after a kill Tune did not record
    assert [r["round"] for r in again] == [1, 2] and all(r["resumed"] for r in again)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in reports]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing ran again


def test_the_sweep_files_engine_reaches_each_trials_run(tmp_path, monkeypatch):
    path = write(tmp_path, '[sweep]\nengine = "cohort"\ncohort_size = 5\n[base]\nrounds = 1\n', "e.toml")
    settings = load_sweep(path).settings
    assert (settings.engine, settings.cohort_size) == ("cohort", 5)
    seen = {}

    class Ran(Exception):
        pass

    def fake_run(cfg, engine="ray", cohort_size=0, **_):
        seen.update(engine=engine, cohort_size=cohort_size)
        raise Ran

    import simulations.run

    monkeypatch.setattr(simulations.run, "run_inprocess", fake_run)
    with pytest.raises(Ran):
        trial({"rounds": 1}, out_root=str(tmp_path), report=lambda row: None, engine=settings.engine,
              cohort_size=settings.cohort_size)
    assert seen == {"engine": "cohort", "cohort_size": 5}


def test_a_failing_trial_raises_for_tune_to_record(tmp_path):
    config = {"data": "pamap2", "data_dir": str(tmp_path / "no-data"), "backbone": str(tmp_path / "mae.safetensors")}
    with pytest.raises(FedharError, match="'pamap2' not found"):
        trial(config, out_root=str(tmp_path), report=lambda row: None)


# --------------------------------------------------------------------------- the table


def fake_trial(exp_dir: Path, tid: str, config: dict, rounds: list[dict], error: str = "", extra: str = "") -> Path:
    d = exp_dir / tid
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config))
    lines = [json.dumps({**r, "trial_id": tid, "training_iteration": i + 1, "config": config, "pid": 1,
                         "seconds": 1.0 + i, "node": "n1", "hostname": "h", "node_ip": "10.0.0.1", "clients": 2,
                         "resumed": False, "peak_rss_mb": 700.0, "cpu_seconds": 2.0})
             for i, r in enumerate(rounds)]
    (d / "result.json").write_text("\n".join(lines) + ("\n" + extra if extra else "") + "\n")
    if error:
        (d / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    return d


def test_results_table_has_a_row_per_trial_and_round_and_one_per_failed_trial(tmp_path):
    sweep = load_sweep(TINY)
    exp = tmp_path / "tune" / "all"
    cfg = {"synthetic_domains": 2, "synthetic_subjects": 3, "pretrain_epochs": 1, "rounds": 2}
    r1, r2 = {"round": 1, "accuracy": 0.5, "clients_trained": 2}, {"round": 2, "accuracy": 0.75, "clients_trained": 2}
    # a round reported twice (a resumed run) counts once, the last report wins; a line cut short is skipped
    fake_trial(exp, "t_00000", {**cfg, "strategy": "fedavg"}, [dict(r1, accuracy=0.1), r1, r2], extra='{"round": 3, "acc')
    fake_trial(exp, "t_00001", {**cfg, "strategy": "ffa"}, [r1])  # stopped after round 1 (by ASHA)
    fake_trial(exp, "t_00002", {**cfg, "strategy": "ffa", "lr": 1.0}, [], error="ValueError: boom")
    # killed before Tune synced its last report: the run's own rounds.csv fills the gap
    lost = fake_trial(exp, "t_00003", {**cfg, "strategy": "fedsa"}, [r1])
    (lost / "run").mkdir()
    pd.DataFrame([r1, r2]).to_csv(lost / "run" / "rounds.csv", index=False)
    table = results_table(sweep, tmp_path)
    assert table[table["trial_id"] == "t_00003"]["round"].tolist() == [1, 2]
    assert (table[table["trial_id"] == "t_00003"]["status"] == "ok").all()
    assert table[table["trial_id"] == "t_00003"]["node"].tolist() == ["n1", "n1"]
    table = table[table["trial_id"] != "t_00003"]
    assert list(table.columns[:4]) == ["experiment", "trial_id", "status", "data"]
    assert list(table.columns[-len(TRIAL_COLUMNS):]) == list(TRIAL_COLUMNS)
    assert list(table["status"]) == ["ok", "ok", "stopped", "failed"]
    assert list(table["strategy"]) == ["fedavg", "fedavg", "ffa", "ffa"]
    assert table["accuracy"].tolist()[:3] == [0.5, 0.75, 0.5]
    assert str(table["round"].dtype) == "Int64" and table["round"].isna().sum() == 1
    assert str(table["clients_trained"].dtype) == "Int64"
    assert table["error"].iloc[3] == "ValueError: boom" and table["error"].iloc[0] == ""
    assert (table["node"].iloc[:3] == "n1").all() and (table["rounds"] == 2).all()
    # a live status from Tune wins over what the files say
    live = results_table(sweep, tmp_path, live={"all": {"t_00001": ("RUNNING", str(exp / "t_00001"))}})
    assert live.loc[live["trial_id"] == "t_00001", "status"].item() == "running"


def test_the_best_trial_per_rule_is_confirmed_and_compared_by_paired_differences(tmp_path):
    sweep = load_sweep(SWEEPS / "fair_rules_smoke.toml")
    base = {**sweep.base}
    for rule, scores in (("fedavg", (0.6, 0.7)), ("fedprox", (0.8, 0.5))):
        for i, score in enumerate(scores):
            fake_trial(tmp_path / "tune" / rule, f"{rule}_{i}", {**base, "strategy": rule, "lr": 10.0 ** -(i + 2),
                                                                  "seed": 0},
                       [{"round": 1, "server_accuracy": 0.1}, {"round": 2, "server_accuracy": score}])
    for rule, scores in (("fedavg", (0.70, 0.72, 0.74)), ("fedprox", (0.75, 0.78, 0.80))):
        for seed, score in enumerate(scores):
            fake_trial(tmp_path / "tune" / "confirm", f"c_{rule}_{seed}",
                       {"fl": {**base, "strategy": rule, "seed": seed, "server_val_fraction": 0.0}},
                       [{"round": 1, "server_accuracy": 0.1}, {"round": 2, "server_accuracy": score}])
    results = results_table(sweep, tmp_path)
    best = select_best(sweep, results, lambda exp, tid: _params(tmp_path / "tune" / exp / tid))
    assert set(best) == {"fedavg", "fedprox"}  # only rules with finished trials
    assert best["fedavg"]["trial_id"] == "fedavg_1" and best["fedavg"]["values"] == {"0": {"lr": 0.001}}
    assert best["fedprox"]["trial_id"] == "fedprox_0" and best["fedprox"]["score"] == 0.8
    assert best["fedprox"]["config"]["strategy"] == "fedprox" and best["fedavg"]["trials"] == 2
    table = comparison_table(sweep, results, best).set_index("strategy")
    assert table.loc["fedavg", "diff_vs_fedavg"] == "(baseline)"
    assert table.loc["fedprox", "seeds"] == 3
    assert table.loc["fedprox", "test_server_accuracy_mean"] == pytest.approx(0.7767, abs=1e-4)
    # paired differences 0.05, 0.06, 0.06: mean 0.0567, t(0.975, 2) = 4.303, sd 0.00577
    assert table.loc["fedprox", "diff_low"] == pytest.approx(0.0567 - 4.303 * 0.00577 / 3 ** 0.5, abs=1e-3)
    assert table.loc["fedprox", "verdict"] == "difference"


def test_each_confirmation_seed_is_tuned_on_its_own_validation_subjects(tmp_path):
    """The fair comparison's leak: tuned at seed 0 only, its validation subjects were test
    subjects of seeds 1 and 2. Now every [confirm] seed is tuned on validation subjects drawn
    from that seed's training subjects, and confirmed with its own selection."""
    from simulations.sweep_confirm import confirm_cases
    from simulations.task import federation

    sweep = load_sweep(SWEEPS / "fair_rules_smoke.toml")
    assert sweep.tunes_per_seed
    for exp in sweep.experiments():
        assert exp.grid["seed"] == list(sweep.confirm.seeds) and "seed" not in exp.base
        assert exp.size(sweep.settings.num_samples) == sweep.settings.num_samples * len(sweep.confirm.seeds)
    fedavg = sweep.experiments()[0]
    for seed in sweep.confirm.seeds:  # the subjects a tuning trial of this seed validates on
        tuning = federation(FLConfig(**{**fedavg.base, "seed": seed}))
        testing = federation(FLConfig(**{**fedavg.base, **sweep.confirm.set, "seed": seed}))
        val, test = set(tuning.server_test.subject), set(testing.server_test.subject)
        assert val and test and not val & test  # never this seed's test subjects
        assert val <= set(testing.windows.subject)  # drawn from its training subjects

    # selection per seed, and each seed confirmed with its own configuration
    base = {k: v for k, v in sweep.base.items() if k != "seed"}
    for seed, lrs in ((0, (1e-3, 1e-2)), (1, (2e-3, 2e-2)), (2, (3e-3, 3e-2))):
        for i, (lr, score) in enumerate(zip(lrs, (0.9, 0.5) if seed != 1 else (0.5, 0.9))):
            fake_trial(tmp_path / "tune" / "fedavg", f"s{seed}_{i}", {**base, "strategy": "fedavg", "lr": lr, "seed": seed},
                       [{"round": 1, "server_accuracy": 0.1}, {"round": 2, "server_accuracy": score}])
    best = select_best(sweep, results_table(sweep, tmp_path), lambda exp, tid: _params(tmp_path / "tune" / exp / tid))
    assert {s: b["values"]["lr"] for s, b in best["fedavg"]["by_seed"].items()} == {"0": 1e-3, "1": 2e-2, "2": 3e-3}
    cases = confirm_cases(sweep, best)
    assert [(c["seed"], c["lr"], c["server_val_fraction"]) for c in cases] == [(0, 1e-3, 0.0), (1, 2e-2, 0.0), (2, 3e-3, 0.0)]


# --------------------------------------------------------------------------- on Ray Tune


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the sweep and every process of its session (its local Ray too)."""
    import psutil

    sid = proc.pid
    os.killpg(sid, signal.SIGKILL)
    proc.wait(timeout=30)
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                p.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass


@pytest.mark.slow
def test_a_sweep_killed_after_its_first_trial_resumes_without_rerunning_it(tmp_path, shared_cache):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "fedhar.cli", "sweep", str(TINY), "--out-dir", str(out), "--max-concurrent", "1"]
    env = {**os.environ, "FEDHAR_CACHE_DIR": str(shared_cache), "FLWR_TELEMETRY_ENABLED": "0"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finished = None
    try:
        deadline = time.time() + 240
        while finished is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            started = len(list((out / "tune" / "all").glob("*/params.json")))
            for rounds_csv in (out / "tune" / "all").glob("*/run/rounds.csv"):  # rewritten every round
                if started >= 2 and len(pd.read_csv(rounds_csv)) == 2:  # all its rounds, and Tune moved on
                    finished = rounds_csv.parent
    finally:
        _kill_session(proc)
    assert finished is not None, (tmp_path / "first.log").read_text()[-3000:]
    stamps = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    assert len(list((out / "tune" / "all").glob("*/params.json"))) <= 2

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming experiment all" in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the finished trial did not run again
    trials = sorted(p.name for p in (out / "tune" / "all").iterdir() if (p / "params.json").exists())
    assert len(trials) == 2  # the same two trials: none started afresh under a new id
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 * 2 and (results["status"] == "ok").all()
    assert sorted(results["strategy"].unique()) == ["fedavg", "ffa"] and set(results["trial_id"]) == set(trials)
    for column in ("experiment", "trial_id", "status", "strategy", "mode", "rank", "local_epochs", "seed", "rounds",
                   "synthetic_domains", "round", "accuracy", "macro_f1", "train_loss", "bytes_up", *TRIAL_COLUMNS):
        assert column in results, column
    assert (results["node"].str.len() > 0).all() and (results["clients"] == 2).all()
    # (a round whose report Tune had not synced when the driver was killed comes from the run's
    # rounds.csv: it has no process figures; the last round of every trial was reported)
    last = results.groupby("trial_id").tail(1)
    assert (last["peak_rss_mb"] > 50).all() and results["hostname"].notna().all()
    assert len(json.loads((out / "sweep.json").read_text())["history"]) == 2
    tb = list((out / "tune" / "all").glob("*/events.out.tfevents.*"))
    assert len(tb) >= 2  # Tune's TensorBoard output, per trial
    resumed = [t for t in trials if (out / "tune" / "all" / t / "run") != finished][0]
    assert "fedhar fl: finished" in (out / "tune" / "all" / resumed / "stdout").read_text()  # the trial's own output


@pytest.mark.slow
def test_asha_stops_a_trial_that_is_worse_after_its_first_round(tmp_path):
    """A real ASHA run: two trials one after the other, the second with a learning rate that
    cannot learn; at the first rung it is below the first trial and is stopped there."""
    from simulations.sweep_run import run_sweep

    path = write(tmp_path, '[sweep]\nname = "asha"\nmax_concurrent = 1\nscheduler = "asha"\ngrace_rounds = 1\n'
                           '[base]\nsynthetic_domains = 2\nsynthetic_subjects = 3\npretrain_epochs = 1\nrounds = 3\n'
                           '[grid]\nlr = [0.003, 1e-9]\n', "asha.toml")
    lines = []
    outcome = run_sweep(load_sweep(path), tmp_path / "out", log=lines.append)
    last = outcome.results.groupby("lr").tail(1).set_index("lr")
    assert last.loc[0.003, "status"] == "ok" and last.loc[0.003, "round"] == 3, lines
    assert last.loc[1e-9, "status"] == "stopped" and last.loc[1e-9, "round"] == 1, lines
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["scheduler"] == "asha"
