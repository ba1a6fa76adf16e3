"""A dataset from outside the package: registered by name, new activities appended, federated."""

import json
from importlib.metadata import EntryPoint

import pandas as pd
import pytest

from fedhar.data import labels, registry
from fedhar.errors import FedharError
from simulations.config import FLConfig
from tests.fixtures.my_dataset import JuggleReader, write_juggle

READER = "tests.fixtures.my_dataset:JuggleReader"


@pytest.fixture(autouse=True)
def registry_restored(monkeypatch):
    """Other tests' dataset lists stay fedhar's own (added activities stay: ids are append-only)."""
    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))


def test_registering_a_reader_appends_its_new_activities_and_keeps_every_id():
    before = {name: labels.activity_id(name) for name in labels.ACTIVITIES}
    registry.load_readers(READER)
    registry.load_readers(READER)  # every process of a run does it, some twice: a no-op
    assert "juggle" in registry.dataset_names() and isinstance(registry.get_reader("juggle"), JuggleReader)
    assert {name: labels.activity_id(name) for name in labels.ACTIVITIES} == before  # append-only
    assert labels.activities()[: len(labels.ACTIVITIES)] == labels.ACTIVITIES
    assert labels.activities().count("juggling") == 1
    assert labels.activity_id("juggling") >= len(labels.ACTIVITIES)
    space = labels.LabelSpace.from_ids([0, labels.activity_id("juggling")])
    assert space.names == ("walking", "juggling") and list(space.encode([labels.activity_id("juggling")])) == [1]
    assert "juggle" not in registry.builtin_reader_names()  # not downloadable


def test_bad_registrations_say_what_is_wrong():
    with pytest.raises(FedharError, match="already registered"):
        registry.register_reader("hapt", JuggleReader)
    with pytest.raises(FedharError, match="not a subclass of fedhar.data.readers.base.Reader"):
        registry.register_reader("mine", "tests.fixtures.my_rule:FrozenARule")
    with pytest.raises(FedharError, match="cannot import module 'tests.fixtures.absent'"):
        FLConfig(readers="tests.fixtures.absent:Reader")
    with pytest.raises(FedharError, match=r"unknown dataset 'jugle' \(did you mean 'juggle'\?\)"):
        FLConfig(data="jugle", readers=READER)


def test_an_entry_point_registers_a_dataset(monkeypatch):
    ep = EntryPoint(name="juggle-ep", value=READER, group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))
    assert "juggle-ep" in registry.dataset_names()
    assert isinstance(registry.get_reader("juggle-ep"), JuggleReader)


def test_a_failed_clients_own_reason_is_what_the_server_reports():
    from simulations.rounds import client_reason

    flower = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() (pid=1, "
              "repr=<ClientAppActor object at 0x7f>)\n  File \"ray_actor.py\", line 65, in run\n"
              "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. Message: "
              "partition 0: could not load 'toy': FedharError: unknown dataset 'toy'; known: hapt'>")
    assert client_reason(flower) == ("RayTaskError(ClientAppException): partition 0: could not load 'toy': "
                                     "FedharError: unknown dataset 'toy'; known: hapt")
    assert client_reason("no reply within\n 5 s") == "no reply within 5 s"


@pytest.mark.slow
def test_a_federation_on_an_out_of_tree_dataset(tmp_path, monkeypatch):
    """The inline engine: the clients resolve the reader from the run config's readers key."""
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    from simulations.run import run_inprocess

    write_juggle(tmp_path / "data")
    cfg = FLConfig(data="juggle", readers=READER, data_dir=str(tmp_path / "data"), partition="subject",
                   pretrain_epochs=1, synthetic_domains=2, synthetic_subjects=3, rounds=2, batch_size=16,
                   out_dir=str(tmp_path / "run"))
    out = run_inprocess(cfg, engine="inline")
    rounds = pd.read_csv(out / "rounds.csv")
    assert (rounds["clients_trained"] == 4).all() and (rounds["failed"] == 0).all()
    assert rounds["accuracy"].notna().all()
    config = json.loads((out / "config.json").read_text())
    assert config["label_space"] == ["walking", "juggling"] and config["config"]["readers"] == READER


@pytest.mark.slow
def test_ray_actors_resolve_an_out_of_tree_dataset_and_rule_from_the_run_config(tmp_path, monkeypatch):
    """Nothing patched in this process reaches Ray's actors: they import the reader and the
    rule named in the run config (the repository root on PYTHONPATH, as an installed package
    would be)."""
    from pathlib import Path

    from simulations.run import run_inprocess

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    write_juggle(tmp_path / "data")
    cfg = FLConfig(data="juggle", readers=READER, data_dir=str(tmp_path / "data"), partition="subject",
                   strategy="tests.fixtures.my_rule:FrozenARule", pretrain_epochs=1, synthetic_domains=2,
                   synthetic_subjects=3, rounds=1, batch_size=16, out_dir=str(tmp_path / "run"))
    out = run_inprocess(cfg, engine="ray")
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    assert (rounds["clients_trained"] == 4).all() and (rounds["failed"] == 0).all()
    # a client that had not frozen A would send it, and the server (no A in its arrays) reject it
    assert (rounds["rejected"] == 0).all()
    train = clients[clients["phase"] == "train"]
    assert (train["bytes_sent"] == train["bytes_received"]).all()  # B and the head, both ways
