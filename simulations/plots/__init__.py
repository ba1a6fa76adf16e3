"""Figures from fedhar's result tables alone (no training): `fedhar plot KIND INPUT... --out-dir DIR`.

Each function reads a sweep (results.csv), run folders (rounds.csv, clients.csv, drift.csv,
inexactness.csv, config.json) and/or LODO runs.csv tables, writes NAME.png (dpi 150),
optionally NAME.svg, and NAME.json, which lists every input file with its sha256 so a
figure can be traced to its data, and returns the matplotlib Figure.

    drift_vs_round       client drift per round, a line per strategy
    inexactness_scaling  aggregation inexactness vs local epochs and vs clients per round
    accuracy_per_client  one run: each client's accuracy per round (+ server, held out)
    accuracy_vs_bytes    final accuracy vs communicated MB, Pareto front
    rank_ablation        accuracy / macro-F1 vs LoRA rank (sweep and/or LODO)
    lora_vs_qlora        memory vs accuracy, LoRA beside QLoRA (sweep and/or LODO)
    plot_all             every figure the inputs allow
"""

from simulations.plots.figures import (
                                  FIGURES,
                                  accuracy_per_client,
                                  accuracy_vs_bytes,
                                  drift_vs_round,
                                  inexactness_scaling,
                                  lora_vs_qlora,
                                  plot_all,
                                  rank_ablation,
)
from simulations.plots.tables import NothingToPlot

__all__ = ["FIGURES", "NothingToPlot", "accuracy_per_client", "accuracy_vs_bytes", "drift_vs_round",
           "inexactness_scaling", "lora_vs_qlora", "plot_all", "rank_ablation"]
