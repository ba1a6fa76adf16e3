"""Does tuning change the ranking of the aggregation rules? The fair comparison's tuned rules
beside the same rules at fixed, untuned settings, on the same seeds and test subjects.

    python -m simulations.fair_rules_report results/sweeps/fair_rules results/sweeps/fair_rules_untuned
    # writes results/sweeps/fair_rules/tuned_vs_untuned.csv and .md

Reads both sweeps' ``results.csv`` (``fedhar sweep`` writes them): the tuned sweep's
confirmation trials and every trial of the untuned one, each trial's last round. Per rule:
the metric over the seeds, tuned and untuned, their paired difference (same seed = same
split and backbone), and each arm's rank by its mean (1 = best). A rule's rank is only as
firm as the paired intervals against its neighbours. Each column of differences is one Holm
family with a verdict per cell (fedhar.stats), and a pair is made only within one batch
(fedhar.pairing; the two sweeps' code and threads from their sweep.json): pairs across the
two sweeps refused for another commit are listed under the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from fedhar.errors import FedharError
from fedhar.pairing import cell, pair
from fedhar.stats import VERDICT_NOTE, holm, mean_std, paired_difference
from simulations.sweep_confirm import CONFIRM, rows_by_strategy, sweep_batch

METRIC = "server_accuracy"
BASELINE = "fedavg"


def _family(pairs: list) -> list[tuple]:
    """[(diff, pairing)] of one column, the diffs Holm-corrected together."""
    diffs = holm([paired_difference(p.a, p.b) for p in pairs])
    return list(zip(diffs, pairs))


def tuned_vs_untuned(tuned: pd.DataFrame, untuned: pd.DataFrame, metric: str = METRIC, tuned_dir: Path | str = "",
                     untuned_dir: Path | str = "") -> pd.DataFrame:
    """Per rule: tuned and untuned over the seeds, each against FedAvg of its own sweep and tuned -
    untuned (the folders give each sweep's batch, fedhar.sweep_confirm.sweep_batch)."""
    t = rows_by_strategy(tuned[tuned["experiment"] == CONFIRM], metric, sweep_batch(tuned_dir) if tuned_dir else None,
                         tuned_dir)
    u = rows_by_strategy(untuned, metric, sweep_batch(untuned_dir) if untuned_dir else None, untuned_dir)
    rules = [r for r in t if r in u] + [r for r in t if r not in u] + [r for r in u if r not in t]
    empty = pd.DataFrame(columns=["seed", metric])
    gains = _family([pair(t.get(r, empty), u.get(r, empty), metric, what=f"{r}: tuned - untuned") for r in rules])
    others = [r for r in rules if r != BASELINE]
    vs_t = dict(zip(others, _family([pair(t.get(r, empty), t.get(BASELINE, empty), metric, what=f"tuned {r} - {BASELINE}")
                                     for r in others])))
    vs_u = dict(zip(others, _family([pair(u.get(r, empty), u.get(BASELINE, empty), metric,
                                          what=f"untuned {r} - {BASELINE}") for r in others])))
    rows = []
    for rule, (gain, gain_pairing) in zip(rules, gains):
        a, b = t.get(rule, empty)[metric].astype(float), u.get(rule, empty)[metric].astype(float)
        refused = gain_pairing.refused + (vs_t[rule][1].refused + vs_u[rule][1].refused if rule != BASELINE else [])
        rows.append({
            "strategy": rule,
            "tuned_mean": a.mean(), "tuned": mean_std(a), "untuned_mean": b.mean(), "untuned": mean_std(b),
            "tuned_minus_untuned": cell(gain, gain_pairing), "gain_low": gain.low, "gain_high": gain.high,
            "gain_verdict": gain.verdict if gain.n else "refused: not one batch",
            f"tuned_vs_{BASELINE}": "(baseline)" if rule == BASELINE else cell(*vs_t[rule]),
            f"untuned_vs_{BASELINE}": "(baseline)" if rule == BASELINE else cell(*vs_u[rule]),
            "refused": "; ".join(refused),
        })
    df = pd.DataFrame(rows)
    df["rank_tuned"] = df["tuned_mean"].rank(ascending=False, method="min")
    df["rank_untuned"] = df["untuned_mean"].rank(ascending=False, method="min")
    return df.sort_values(["rank_tuned", "strategy"]).reset_index(drop=True)


def markdown(df: pd.DataFrame) -> str:
    cols = ["strategy", "rank_tuned", "tuned", f"tuned_vs_{BASELINE}", "rank_untuned", "untuned",
            f"untuned_vs_{BASELINE}", "tuned_minus_untuned"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [(f"{int(r[c])}" if pd.notna(r[c]) else "-") if c.startswith("rank_") else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    refused = [r for cell_ in df["refused"] for r in cell_.split("; ") if r]
    if refused:
        lines += ["", "Pairs refused: not one batch (fedhar.pairing):", "", *[f"- {r}" for r in refused]]
    lines += ["", VERDICT_NOTE]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.fair_rules_report", description=__doc__.splitlines()[0],
                                     epilog="Writes TUNED_SWEEP_DIR/tuned_vs_untuned.csv and .md and prints the table.")
    parser.add_argument("tuned", type=Path, metavar="TUNED_SWEEP_DIR", help="the tuned sweep (with [confirm]), e.g. "
                        "results/sweeps/fair_rules")
    parser.add_argument("untuned", type=Path, metavar="UNTUNED_SWEEP_DIR", help="the untuned sweep, e.g. "
                        "results/sweeps/fair_rules_untuned")
    args = parser.parse_args(argv)
    dirs = [args.tuned, args.untuned]
    for d in dirs:
        if not (d / "results.csv").is_file():
            print(f"fair_rules_report: {d / 'results.csv'}: no such file (run its fedhar sweep first)",
                  file=sys.stderr)
            return 1
    tuned, untuned = (pd.read_csv(d / "results.csv") for d in dirs)
    try:
        df = tuned_vs_untuned(tuned, untuned, tuned_dir=dirs[0], untuned_dir=dirs[1])
    except FedharError as e:
        print(f"fair_rules_report: error: {e}", file=sys.stderr)
        return 2
    df.to_csv(dirs[0] / "tuned_vs_untuned.csv", index=False)
    (dirs[0] / "tuned_vs_untuned.md").write_text(markdown(df))
    print(markdown(df))
    print(f"-> {dirs[0] / 'tuned_vs_untuned.csv'}, {dirs[0] / 'tuned_vs_untuned.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
