"""Aggregation rules: each one module holding its server and client side (strategies/base.py).

The names ``--strategy`` accepts, with a one-line summary each, come from the registry
(strategies/registry.py: built-in rules, the ``fedhar.strategies`` entry-point group, and
``module:Class``); ``fedhar fl --help`` lists them. Every strategy rejects replies with
missing, misshapen or non-finite tensors (logged, never averaged in), and logs one row per
client reply (strategies.recording).
"""

from __future__ import annotations

from strategies.base import ClientSide, Rule
from strategies.recording import RoundLog, recording
from strategies.registry import BUILTIN, get_rule, rule_class, rule_names

#: built-in name -> its Flower strategy class
STRATEGIES = {name: rule_class(name).server_class for name in BUILTIN}
#: built-in strategies whose clients may have different LoRA ranks
HETEROGENEOUS_RANKS = tuple(name for name in BUILTIN if get_rule(name).heterogeneous_ranks)


def make_strategy(name: str, n_train: int, n_clients: int, log: RoundLog, dp=None, **options):
    """A recording strategy of rule ``name`` that trains the nodes it is shown (the round
    loop samples them) and evaluates every node. ``options``: the rule's own keywords
    (``get_rule(name).server_options(cfg)``); ``dp``: central DP (``strategies.dp.DPSettings``)."""
    cls = get_rule(name).server_class
    if dp is not None:
        from strategies.dp import private

        cls, options = private(cls), {**options, "dp": dp}
    return recording(cls)(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=n_train,
        min_evaluate_nodes=n_clients,
        min_available_nodes=n_train,
        log=log,
        **options,
    )


__all__ = ["HETEROGENEOUS_RANKS", "STRATEGIES", "ClientSide", "RoundLog", "Rule", "get_rule", "make_strategy",
           "recording", "rule_names"]
