"""Rules by name: built-in, entry point, or module:Class from outside the package."""

from importlib.metadata import EntryPoint

import pandas as pd
import pytest

from fedhar.errors import FedharError
from simulations.config import FLConfig
from strategies import registry
from strategies.base import Rule
from strategies.fedit import FedIT
from tests.fixtures.my_rule import FrozenARule


def test_every_builtin_name_resolves_to_a_rule_with_a_server_class_and_summary():
    for name in registry.BUILTIN:
        rule = registry.get_rule(name)
        assert isinstance(rule, Rule) and rule.name == name
        assert rule.server_class is not None and rule.summary
    assert set(registry.heterogeneous_rank_names()) == {"flora", "hetlora", "flexlora"}
    assert registry.get_rule("flora").fresh_adapters and not registry.get_rule("fedavg").fresh_adapters


def test_module_class_names_resolve_and_bad_ones_say_why():
    rule = registry.get_rule("tests.fixtures.my_rule:FrozenARule")
    assert isinstance(rule, FrozenARule) and rule.server_class.__name__ == "SharedA"
    with pytest.raises(FedharError, match="cannot import module 'tests.fixtures.nope'"):
        registry.get_rule("tests.fixtures.nope:Rule")
    with pytest.raises(FedharError, match="has no 'Missing'"):
        registry.get_rule("tests.fixtures.my_rule:Missing")
    with pytest.raises(FedharError, match="not a subclass of strategies.base.Rule"):
        registry.get_rule("tests.fixtures.my_rule:NotARule")
    with pytest.raises(FedharError, match=r"unknown strategy 'flexlor' \(did you mean 'flexlora'\?\)"):
        FLConfig(strategy="flexlor")


def test_an_entry_point_registers_a_rule(monkeypatch):
    ep = EntryPoint(name="frozen-a", value="tests.fixtures.my_rule:FrozenARule", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    assert "frozen-a" in registry.rule_names()
    assert isinstance(registry.get_rule("frozen-a"), FrozenARule)
    assert FLConfig(strategy="frozen-a").strategy == "frozen-a"


def test_client_ranks_need_a_rule_that_aggregates_different_ranks():
    with pytest.raises(FedharError, match="--client-ranks needs .*flora, hetlora.*flexlora"):
        FLConfig(strategy="fedavg", client_ranks="4,8")
    assert FLConfig(strategy="flexlora", client_ranks="4,8").max_rank == 8


@pytest.mark.slow
def test_an_out_of_tree_rule_runs_on_both_sides(tmp_path, monkeypatch):
    """Named as module:Class: the server aggregates with its class, every client freezes A."""
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    from simulations.run import run_inprocess

    cfg = FLConfig(synthetic_domains=3, synthetic_subjects=3, pretrain_epochs=1, rounds=2, batch_size=32,
                   out_dir=str(tmp_path / "run"), strategy="tests.fixtures.my_rule:FrozenARule")
    from tests.fixtures.my_rule import SharedA

    SharedA.rounds_aggregated = 0  # a class counter: other tests in this process may have run the rule
    out = run_inprocess(cfg, engine="inline")
    assert SharedA.rounds_aggregated == 2  # the server aggregated with the named class
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    assert (rounds["clients_trained"] == 3).all() and (rounds["rejected"] == 0).all()
    sent = clients[clients["phase"] == "train"]["bytes_sent"]
    adapter_bytes = 4 * 8 * 3072 * 6  # rank 8 A and B of every adapted layer (tests/test_fl_strategies.py)
    assert (sent == 693_792 - adapter_bytes // 2).all()  # A stayed home: frozen on the clients


def test_fedit_is_the_default_rules_server_class():
    assert registry.get_rule("fedavg").server_class is FedIT
