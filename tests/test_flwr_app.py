"""The Flower app as `flwr run .` sees it: its pyproject section, and real runs through a SuperLink."""

import tomllib
from pathlib import Path

import pandas as pd
import psutil
import pytest

from fedhar.errors import FedharError
from simulations.config import FLConfig
from simulations.flwr_launch import launch, project_dir

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_declares_the_app_with_every_config_key_and_default():
    app = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "simulations.server_app:app",
                                 "clientapp": "simulations.client_app:app"}
    # every FLConfig field, with the same default: `--run-config` can override any of them
    assert app["config"] == FLConfig().to_run_config()
    assert FLConfig.from_run_config(app["config"]) == FLConfig()
    # flwr 1.41 comments out a [tool.flwr.federations] block in place: keep none here
    assert "federations" not in tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]


def _tiny(out_dir, **changes) -> FLConfig:
    return FLConfig(**{**dict(synthetic_domains=2, synthetic_subjects=3, pretrain_epochs=1, rounds=2,
                              batch_size=32, out_dir=str(out_dir)), **changes})


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.slow
def test_flwr_run_completes_writes_tables_and_stops_its_daemons(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    before, running = PYPROJECT.read_text(), _descendants()  # what earlier tests left is not ours
    out = launch(_tiny(tmp_path / "run"))
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and (rounds["clients_trained"] == 2).all()
    assert "finished:completed" in capsys.readouterr().out
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


def test_project_dir_is_this_checkout():
    assert project_dir() == PYPROJECT.parent
