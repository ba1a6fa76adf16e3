"""Accuracy against the user-level privacy budget, from the runs of results/fl/privacy/run_all.sh.

    python -m simulations.privacy_report RUNS_DIR OUT_PREFIX

reads every finished run (RUNS_DIR/NAME/done, rounds.csv, config.json) and writes
OUT_PREFIX.csv (one row per run: rule, participation q, seed, target epsilon, epsilon spent,
final accuracy), OUT_PREFIX.md (mean ± std over seeds per rule, q and epsilon, and the paired gap to
the same rule without DP: 95% interval, Holm-corrected verdict over the table, and whether it is
within 2 points by an equivalence test) and OUT_PREFIX.png (accuracy vs epsilon, a line per rule and q,
no DP drawn at the right as "inf"). Accuracy: the server's on its held-out test subjects
where the run had them, else the clients' example-weighted accuracy, after the last round.
Pairs are formed only within one batch (fedhar.pairing: same code, device, threads, epochs,
backbone); a refused pair is listed, never silently used.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

from fedhar.pairing import cell, pair, refused_section, run_batch
from fedhar.stats import holm, mean_std, paired_difference

WITHIN = 0.02  # the question: which rules stay within 2 points of no DP at epsilon 8


def collect(runs: Path) -> pd.DataFrame:
    rows = []
    for done in sorted(runs.glob("*/done")):
        run = done.parent
        cfg = json.loads((run / "config.json").read_text())
        settings, rounds = cfg["config"], pd.read_csv(run / "rounds.csv")
        last = rounds.iloc[-1]
        central = (cfg.get("privacy") or {}).get("central_dp")
        server = "server_accuracy" in rounds and not math.isnan(last.get("server_accuracy", math.nan))
        rows.append({**run_batch(run, cfg), "run": run.name, "data": settings.get("data", "?"), "clients": len(cfg.get("clients", [])),
                     "rounds": len(rounds), "strategy": settings["strategy"], "q": settings["fraction-train"],
                     "seed": settings["seed"], "target_epsilon": settings.get("dp-epsilon") or math.inf,
                     "epsilon_spent": float(last["dp_epsilon"]) if central else math.inf,
                     "noise_multiplier": central["noise_multiplier"] if central else 0.0,
                     "clipped_share": float(last["dp_clipped"]) if central else math.nan,
                     "accuracy": float(last["server_accuracy"] if server else last["accuracy"]),
                     "scored_on": "server test subjects" if server else "clients' test windows"})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> str:
    """Per rule, q and epsilon: accuracy, and the gap to the same rule and q without DP on the
    same seeds (one batch), with its interval and Holm-corrected verdict over the whole table."""
    rows, diffs, pairings, refused = [], [], [], []
    for (strategy, q), group in table.groupby(["strategy", "q"]):
        free = group[group["target_epsilon"] == math.inf]
        for eps, cells in group.groupby("target_epsilon"):
            rows.append((strategy, q, eps, cells))
            if eps == math.inf:
                continue
            pairing = pair(cells, free, "accuracy", what=f"{strategy} q={q} epsilon {eps:g} vs no DP")
            diffs.append(paired_difference(pairing.a, pairing.b, margin=WITHIN))
            pairings.append(pairing)
            refused += pairing.refused
    corrected = iter(zip(holm(diffs), pairings))
    lines = [f"| rule | q | epsilon | accuracy | gap to no DP (points, 95% interval; Holm over {len(diffs)}) "
             f"| within {WITHIN * 100:g} points? | noise multiplier | updates clipped |",
             "|---|---|---|---|---|---|---|---|"]
    for strategy, q, eps, cells in rows:
        gap, within = "-", "-"
        if eps != math.inf:
            diff, pairing = next(corrected)
            gap = cell(diff, pairing)
            within = ("one seed: no test" if diff.n < 2 else
                      "yes (equivalence test)" if diff.p_equivalent < diff.alpha else
                      "no" if diff.high < -WITHIN else "not shown")
        lines.append(f"| {strategy} | {q} | {eps:g} | {mean_std(cells['accuracy'])} | {gap} | {within} | "
                     f"{cells['noise_multiplier'].mean():.3g} | {cells['clipped_share'].mean():.2f} |")
    batches = sorted({" / ".join(map(str, r)) for r in table[["code", "device", "threads"]].itertuples(index=False)})
    lines += ["", f"Runs: {len(table)}; code / device / threads: {'; '.join(batches)}.", ""]
    return "\n".join(lines + refused_section(refused))


def figure(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = sorted(e for e in table["target_epsilon"].unique() if e != math.inf)
    position = {e: i for i, e in enumerate([*finite, math.inf])}
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = zip(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"], "osD^vP")
    for ((strategy, q), group), (colour, marker) in zip(table.groupby(["strategy", "q"]), styles):
        cells = group.groupby("target_epsilon")["accuracy"].agg(["mean", "std", "count"]).sort_index()
        ax.errorbar([position[e] for e in cells.index], cells["mean"], yerr=cells["std"].fillna(0), color=colour,
                    marker=marker, capsize=3, label=f"{strategy}, q={q} (n={int(cells['count'].min())} seeds)")
    ax.set_xticks(range(len(position)), [f"{e:g}" for e in position])
    ax.set_xlabel("user-level epsilon (delta 1e-5); inf = no DP")
    ax.set_ylabel(f"final accuracy ({table['scored_on'].iloc[0]})")
    first = table.iloc[0]
    ax.set_title(f"{first['data']}, {first['clients']} clients, {first['rounds']} rounds: accuracy vs privacy", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m simulations.privacy_report RUNS_DIR OUT_PREFIX", file=sys.stderr)
        return 2
    runs, prefix = Path(argv[0]), Path(argv[1])
    table = collect(runs)
    if table.empty:
        print(f"{runs}: no finished run (NAME/done)", file=sys.stderr)
        return 2
    table.to_csv(prefix.with_suffix(".csv"), index=False)
    prefix.with_suffix(".md").write_text(summary(table))
    figure(table, prefix.with_suffix(".png"))
    print(prefix.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
