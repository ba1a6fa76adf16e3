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


def __getattr__(name: str):
    """The rules are imported on first use, not with the package: a command that
    only needs the names (every ``fedhar`` command builds ``fl``'s options) stays quick.
    STRATEGIES: built-in name -> its Flower strategy class; HETEROGENEOUS_RANKS: the built-in
    strategies whose clients may have different LoRA ranks."""
    if name == "STRATEGIES":
        return {n: rule_class(n).server_class for n in BUILTIN}
    if name == "HETEROGENEOUS_RANKS":
        return tuple(n for n in BUILTIN if get_rule(n).heterogeneous_ranks)
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")


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
