"""Aggregation rules by name: the built-in ones, entry points, and ``module:Class``.

A name resolves, in this order, to:
  1. a built-in rule (``BUILTIN``: name -> "module:Class", imported on first use);
  2. a rule another package registers under the entry-point group ``fedhar.strategies``
     (``[project.entry-points."fedhar.strategies"] myrule = "mypkg.rules:MyRule"``);
  3. ``module:Class``, imported as written (the module must be importable where the
     clients run: installed, or on PYTHONPATH).
The strategy name travels in the run config, so every engine (inline, Ray actors,
``flwr run``) resolves the same class on the server and on every client.

This module imports neither Flower nor the rules until a rule is asked for, so the
command line can list the names cheaply.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from fedhar.errors import FedharError
from fedhar.options import unknown_name
from fedhar.plugins import import_target

ENTRY_POINT_GROUP = "fedhar.strategies"

BUILTIN = {
    "fedavg": "strategies.fedit:FedITRule",
    "fedit": "strategies.fedit:FedITRule",
    "ffa": "strategies.ffa:FFARule",
    "fedsa": "strategies.fedsa:FedSARule",
    "fedex": "strategies.fedex:FedExRule",
    "flora": "strategies.flora:FLoRARule",
    "hetlora": "strategies.hetlora:HetLoRARule",
    "fedprox": "strategies.flower_optimisers:FedProxRule",
    "fedavgm": "strategies.flower_optimisers:FedAvgMRule",
    "fedadam": "strategies.flower_optimisers:FedAdamRule",
    "fedyogi": "strategies.flower_optimisers:FedYogiRule",
    "fedadagrad": "strategies.flower_optimisers:FedAdagradRule",
    "flexlora": "strategies.flexlora:FlexLoRARule",
}


def _plugins() -> dict[str, str]:
    """name -> "module:Class" of the rules other installed packages register."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def rule_names() -> list[str]:
    """Every name ``--strategy`` accepts besides ``module:Class``."""
    return [*BUILTIN, *_plugins()]


def _target(name: str) -> str:
    if ":" in name:
        return name
    target = BUILTIN.get(name) or _plugins().get(name)
    if target is None:
        raise FedharError(unknown_name("strategy", name, rule_names()) + " (or give module:Class)")
    return target


@functools.cache
def rule_class(name: str) -> type:
    """The ``Rule`` subclass a strategy name stands for; a clear FedharError otherwise."""
    from strategies.base import Rule

    target = _target(name)
    cls = import_target(target, "strategy")
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        raise FedharError(f"strategy {name!r}: {target} is not a subclass of strategies.base.Rule")
    if cls.server_class is None:
        raise FedharError(f"strategy {name!r}: {target} sets no server_class")
    return cls


def get_rule(name: str):
    """An instance of the rule ``name`` stands for (``Rule.name`` set to it)."""
    rule = rule_class(name)()
    rule.name = name
    return rule


def check_strategy(name: str) -> str:
    """``name`` if it resolves to a rule, else a FedharError (did-you-mean, known names)."""
    rule_class(name)
    return name


def describe() -> list[tuple[str, str]]:
    """(name, summary) of every named rule, for help texts; a second name of the same rule
    says whose it is ("fedit": "the same rule as fedavg (strategies.fedit:FedITRule)") instead of repeating its summary."""
    first: dict[type, str] = {}
    rows = []
    for name in rule_names():
        cls = rule_class(name)
        if cls in first:
            rows.append((name, f"the same rule as {first[cls]} ({_target(name)})"))
        else:
            first[cls] = name
            rows.append((name, cls.summary))
    return rows


def heterogeneous_rank_names() -> list[str]:
    """The named rules whose clients may differ in LoRA rank."""
    return [name for name in rule_names() if get_rule(name).heterogeneous_ranks]
