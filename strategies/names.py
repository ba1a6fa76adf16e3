"""The built-in strategy names, in the registry's order (strategies/registry.py is the one
table; ``--strategy`` also accepts entry-point rules and ``module:Class``)."""

from strategies.registry import BUILTIN

STRATEGY_NAMES = tuple(BUILTIN)
