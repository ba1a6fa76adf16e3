"""The built-in strategy names, importable without Flower (strategies.registry is the one
table; ``--strategy`` also accepts entry-point rules and ``module:Class``)."""

from strategies.registry import BUILTIN

STRATEGY_NAMES = tuple(BUILTIN)
