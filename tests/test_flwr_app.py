"""The Flower app as `flwr run .` sees it: its pyproject section, and real runs through a SuperLink."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import psutil
import pytest

from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.flwr_launch import launch, project_dir

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
BY_HAND = PYPROJECT.parent / "results" / "flwr_by_hand" / "run.sh"


def test_pyproject_declares_the_app_with_every_config_key_and_default():
    app = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "simulations.server_app:app",
                                 "clientapp": "simulations.client_app:app"}
    # every FLConfig field, with the same default: `--run-config` can override any of them
    assert app["config"] == FLConfig().to_run_config()
    assert FLConfig.from_run_config(app["config"]) == FLConfig()
    # flwr 1.41 comments out a [tool.flwr.federations] block in place: keep none here
    assert "federations" not in tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]


def test_run_config_uses_flowers_key_names_and_still_reads_the_old_rounds_key():
    import argparse

    from simulations.cli import add_config_options, config_from_args

    assert FLConfig(rounds=4).to_run_config()["num-server-rounds"] == 4
    assert "rounds" not in FLConfig().to_run_config() and FLConfig(rounds=4).settings()["rounds"] == 4
    assert FLConfig.from_run_config({"num-server-rounds": 4, "local-epochs": 2}) == FLConfig(rounds=4, local_epochs=2)
    # an earlier run's run_config.toml (key "rounds") still loads
    old = tomllib.loads((PYPROJECT.parent / "results" / "deploy" / "resume" / "run_config.toml").read_text())
    assert "rounds" in old and FLConfig.from_run_config(old).rounds == old["rounds"]
    with pytest.raises(FedharError, match="'rounds' repeats 'num-server-rounds'"):
        FLConfig.from_run_config({"num-server-rounds": 4, "rounds": 5})
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    for flag in ("--rounds", "--num-server-rounds"):
        assert config_from_args(parser.parse_args([flag, "6"])).rounds == 6


def _tiny(out_dir, **changes) -> FLConfig:
    return FLConfig(**{**dict(synthetic_domains=2, synthetic_subjects=3, pretrain_epochs=1, rounds=2,
                              batch_size=32, out_dir=str(out_dir)), **changes})


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.slow
def test_flwr_run_completes_writes_tables_and_stops_its_daemons(tmp_path, monkeypatch, capsys):
    from fedhar.cli import main

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    before, running = PYPROJECT.read_text(), _descendants()  # what earlier tests left is not ours
    out = tmp_path / "run"
    assert main(["fl", "--engine", "flwr", "--synthetic-domains", "2", "--synthetic-subjects", "3", "--pretrain-epochs",
                 "1", "--rounds", "2", "--batch-size", "32", "--out-dir", str(out)]) == 0
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["clients_trained"] == 2).all()
    # the output of the other engines: one line per round, none of Flower's or Ray's own lines
    printed = capsys.readouterr()
    lines = (printed.out + printed.err).splitlines()
    assert [line.split()[1] for line in lines if line.startswith("round ")] == ["1/2", "2/2"], lines
    assert not [line for line in lines if re.search(r"INFO|WARNING|SuperNode|ClientAppActor|Flower|flwr run", line)]
    assert any(line.startswith("fedhar fl: 2 clients") and "flwr engine" in line for line in lines)
    assert "INFO" in (out / ".flwr" / "flwr_run.log").read_text()  # Flower's lines went to its log
    assert (out / "run_config.toml").exists()
    assert PYPROJECT.read_text() == before  # flwr run did not rewrite the project
    assert not _descendants() - running  # SuperLink, simulation and Ray all stopped


@pytest.mark.slow
def test_a_failing_server_app_is_a_failure_not_exit_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    running = _descendants()
    # flwr run --stream exits 0 here; the launcher must read the run's status and fail
    with pytest.raises(FedharError, match="finished:failed.*round 1: no client trained"):
        launch(_tiny(tmp_path / "run", inject_failure="0:1,1:1", rounds=1))
    assert not _descendants() - running


@pytest.mark.slow
def test_flwr_run_federates_a_dataset_and_a_rule_from_a_temporary_module(tmp_path, monkeypatch):
    """A module outside every package of the project, on PYTHONPATH only: the SuperNodes'
    ClientApps and the ServerApp (processes of the SuperLink) import the reader and the rule
    the run config names."""
    import json

    from fedhar.data import registry
    from tests.fixtures import my_dataset, my_rule

    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))  # "juggle" stays this test's
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "outside_plugins.py").write_text(  # the fixtures' reader and rule, as one stand-alone module
        Path(my_dataset.__file__).read_text() + "\n" + Path(my_rule.__file__).read_text())
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("PYTHONPATH", str(plugins))
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    running = _descendants()
    my_dataset.write_juggle(tmp_path / "data", subjects=(1, 2))  # two clients: one per subject
    out = launch(_tiny(tmp_path / "run", data="juggle", readers="outside_plugins:JuggleReader",
                       strategy="outside_plugins:FrozenARule", data_dir=str(tmp_path / "data"),
                       partition="subject", batch_size=16))
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["clients_trained"] == 2).all()
    assert (rounds["failed"] == 0).all() and (rounds["rejected"] == 0).all()
    train = clients[clients["phase"] == "train"]
    # A frozen by the module's rule on the clients, and absent from its server's arrays: B and the head travel
    assert (train["bytes_sent"] == train["bytes_received"]).all()
    config = json.loads((out / "config.json").read_text())
    assert config["label_space"] == ["walking", "juggling"]
    assert config["config"]["strategy"] == "outside_plugins:FrozenARule"
    assert not _descendants() - running


def test_the_by_hand_script_runs_the_readmes_commands_verbatim():
    readme = (PYPROJECT.parent / "README.md").read_text()
    commands = readme.split("By hand, the\nequivalent is:\n\n```\n")[1].split("```")[0]
    assert "flwr run . local --stream" in commands and commands in BY_HAND.read_text()


@pytest.mark.slow
@pytest.mark.long  # about 6 min (the README command pretrains 5 epochs); also results/flwr_by_hand/output.txt
def test_readmes_by_hand_flwr_run_completes_from_an_empty_cache_and_leaves_nothing_running(tmp_path):
    """results/flwr_by_hand/run.sh on a copy of the project (its runs/flwr is the copy's)."""
    project = tmp_path / "project"
    for name in ("fedhar", "strategies", "simulations"):
        shutil.copytree(PYPROJECT.parent / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PYPROJECT.parent / name, project / name)
    (project / ".venv").symlink_to(Path(sys.executable).parents[1])
    done = subprocess.run(["bash", str(BY_HAND), str(project)], capture_output=True, text=True, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "(0 entries)" in out.splitlines()[0]  # an empty cache: the ServerApp pretrained the backbone
    # --stream shows each round as it finishes, before `flwr list` reports the end
    assert out.index("backbone: epoch 5/5") < out.index("round 1/2") < out.index("round 2/2") < out.index('"success"')
    assert '"status": "finished:completed"' in out and "# no process of this run left" in out
    assert len(pd.read_csv(project / "runs" / "flwr" / "rounds.csv")) == 2


def test_project_dir_is_this_checkout():
    assert project_dir() == PYPROJECT.parent
