"""One vocabulary across sub-commands: the same options have the same defaults everywhere,
and `fedhar fl`'s help says what it does."""

import pytest

from fedhar import options
from fedhar.cli import build_parser, main

SYNTHETIC = ("synthetic_domains", "synthetic_subjects", "synthetic_seed")

#: a minimal valid command line of every sub-command that generates synthetic data
COMMANDS = {
    "fl": ["fl"],
    "lodo": ["lodo", "--data", "synthetic", "--out-dir", "x"],
    "pretrain": ["pretrain"],
    "evaluate": ["evaluate", "model", "--data", "synthetic"],
    "data info": ["data", "info", "synthetic"],
}


@pytest.fixture(scope="module")
def parsed():
    parser = build_parser()
    return {name: parser.parse_args(argv) for name, argv in COMMANDS.items()}


def test_shared_options_have_one_default_across_sub_commands(parsed):
    from fedhar.data.synthetic import SyntheticConfig
    from fedhar.lodo import LodoPlan
    from simulations.config import FLConfig

    expected = (options.SYNTHETIC_DOMAINS, options.SYNTHETIC_SUBJECTS, options.SYNTHETIC_SEED)
    for name, args in parsed.items():
        assert tuple(getattr(args, o) for o in SYNTHETIC) == expected, name
    # and the Python entry points (fedhar.run_lodo, simulations.federate, load) agree with the command line
    assert (SyntheticConfig().n_domains, SyntheticConfig().subjects_per_domain, SyntheticConfig().seed) == expected
    assert tuple(getattr(FLConfig(), o) for o in SYNTHETIC) == expected
    assert tuple(getattr(LodoPlan(datasets=("synthetic",)), o) for o in SYNTHETIC) == expected
    # the README's main job: one client per synthetic domain, 3 clients
    assert expected[0] == 3
    assert parsed["fl"].device == parsed["lodo"].device == "cpu"


def test_fl_has_the_seed_thread_and_device_options_of_lodo():
    parser = build_parser()
    fl = parser.parse_args(["fl", "--seeds", "0,1,2", "--threads", "2", "--device", "cpu", "--synthetic-seed", "5"])
    lodo = parser.parse_args([*COMMANDS["lodo"], "--seeds", "0,1,2", "--threads", "2", "--device", "cpu",
                              "--synthetic-seed", "5"])
    for option in ("seeds", "threads", "device", "synthetic_seed"):
        assert getattr(fl, option) == getattr(lodo, option), option


def test_fl_seeds_run_one_federation_per_seed_in_its_own_folder(monkeypatch, tmp_path):
    import simulations.cli

    ran = []
    monkeypatch.setattr(simulations.cli, "run_one", lambda cfg, engine, address, cohort_size, **_: ran.append(cfg))
    assert main(["fl", "--seeds", "0,2", "--synthetic-seed", "7", "--out-dir", str(tmp_path / "r")]) == 0
    assert [(c.seed, c.synthetic_seed, c.out_dir) for c in ran] == [
        (0, 7, str(tmp_path / "r" / "seed-0")), (2, 7, str(tmp_path / "r" / "seed-2"))]


def test_fl_cpus_per_client_reaches_the_ray_engine(monkeypatch):
    """Fewer Ray actors (each a process with torch and peft): Flower's client_resources num_cpus."""
    import simulations.run

    seen = {}
    monkeypatch.setattr(simulations.run, "run_inprocess", lambda cfg, **k: seen.update(k))
    assert main(["fl", "--cpus-per-client", "1.5"]) == 0
    assert seen["cpus_per_client"] == 1.5 and seen["engine"] == "ray"


def test_fl_synthetic_seed_draws_another_population():
    from simulations.config import FLConfig
    from simulations.task import synthetic_config

    assert synthetic_config(FLConfig()).seed == 0  # the committed runs' population is unchanged
    assert synthetic_config(FLConfig(synthetic_seed=5, seed=1)).seed == 6
    assert synthetic_config(FLConfig(synthetic_seed=5), pretraining=True).seed != synthetic_config(FLConfig()).seed


@pytest.mark.parametrize("argv, message", [
    (["fl", "--threads", "-1"], "--threads must be >= 0"),
    (["fl", "--synthetic-seed", "-1"], "--synthetic-seed must be in 0..4294967295"),
    (["fl", "--seeds", "0,-1"], "--seeds must be one or more seeds >= 0"),
    (["fl", "--device", "tpu"], "--device tpu: only cpu or cuda[:N]"),
    (["fl", "--cpus-per-client", "0"], "--cpus-per-client must be > 0"),
    (["fl", "--cpus-per-client", "2", "--engine", "inline"], "--cpus-per-client is for the ray engine"),
    (["fl", "--cpus-per-client", "100000"], "CPUs of this run's Ray: no client could run"),
])
def test_fl_refuses_bad_values_of_the_new_options(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_strategy_help_is_one_line_per_rule(capsys):
    from strategies.registry import rule_names

    with pytest.raises(SystemExit):
        build_parser().parse_args(["fl", "--help"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and line.split()[0] in rule_names()}
    assert set(lines) == set(rule_names())
    text = {name: line.split(None, 1)[1] for name, line in lines.items()}
    assert text["fedavg"] != text["fedit"] and "same rule as fedavg" in text["fedit"]
    assert text["fedex"] != text["flora"]


def test_inject_failure_is_hidden_from_help_but_works(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fl", "--help"])
    assert "inject" not in capsys.readouterr().out
    assert build_parser().parse_args(["fl", "--inject-failure", "0:1"]).inject_failure == "0:1"


def test_top_level_help_says_fl_defaults_to_ray(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # the line may wrap
    assert "fl run a federated LoRA/QLoRA simulation (Flower; default engine: Ray)" in text
    assert "in-process" not in text
