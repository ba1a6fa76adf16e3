"""Does tuning change the ranking of the aggregation rules? The fair comparison's tuned rules
beside the same rules at fixed, untuned settings, on the same seeds and test subjects.

    python -m simulations.fair_rules_report results/sweeps/fair_rules results/sweeps/fair_rules_untuned
    # writes results/sweeps/fair_rules/tuned_vs_untuned.csv and .md

Reads both sweeps' ``results.csv`` (``fedhar sweep`` writes them): the tuned sweep's
confirmation trials and every trial of the untuned one, each trial's last round. Per rule:
the metric over the seeds, tuned and untuned, their paired difference (same seed = same
split and backbone), and each arm's rank by its mean (1 = best). A rule's rank is only as
firm as the paired intervals against its neighbours; the .md says which differences to
FedAvg have an interval clear of zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from fedhar.stats import mean_std, paired_difference
from simulations.sweep_confirm import CONFIRM, scores_by_strategy

METRIC = "server_accuracy"
BASELINE = "fedavg"


def tuned_vs_untuned(tuned: pd.DataFrame, untuned: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    t = scores_by_strategy(tuned[tuned["experiment"] == CONFIRM], metric)
    u = scores_by_strategy(untuned, metric)
    rules = [r for r in t if r in u] + [r for r in t if r not in u] + [r for r in u if r not in t]
    rows = []
    for rule in rules:
        a, b = t.get(rule, pd.Series(dtype=float)), u.get(rule, pd.Series(dtype=float))
        gain = paired_difference(a, b)
        vs_t = paired_difference(a, t.get(BASELINE, pd.Series(dtype=float)))
        vs_u = paired_difference(b, u.get(BASELINE, pd.Series(dtype=float)))
        rows.append({
            "strategy": rule,
            "tuned_mean": a.mean(), "tuned": mean_std(a), "untuned_mean": b.mean(), "untuned": mean_std(b),
            "tuned_minus_untuned": gain.text(), "gain_low": gain.low, "gain_high": gain.high,
            "gain_verdict": gain.verdict,
            f"tuned_vs_{BASELINE}": "(baseline)" if rule == BASELINE else vs_t.text(),
            f"untuned_vs_{BASELINE}": "(baseline)" if rule == BASELINE else vs_u.text(),
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m simulations.fair_rules_report TUNED_SWEEP_DIR UNTUNED_SWEEP_DIR", file=sys.stderr)
        return 2
    dirs = [Path(a) for a in argv]
    for d in dirs:
        if not (d / "results.csv").is_file():
            print(f"fair_rules_report: {d / 'results.csv'}: no such file (run its fedhar sweep first)",
                  file=sys.stderr)
            return 1
    tuned, untuned = (pd.read_csv(d / "results.csv") for d in dirs)
    df = tuned_vs_untuned(tuned, untuned)
    df.to_csv(dirs[0] / "tuned_vs_untuned.csv", index=False)
    (dirs[0] / "tuned_vs_untuned.md").write_text(markdown(df))
    print(markdown(df))
    print(f"-> {dirs[0] / 'tuned_vs_untuned.csv'}, {dirs[0] / 'tuned_vs_untuned.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
