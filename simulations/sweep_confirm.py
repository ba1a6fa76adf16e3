"""The confirmation stage of a sweep ([confirm]): each experiment's best trial, re-run on
several seeds with [confirm] set applied, and every strategy compared with the baseline.
The selection and the comparison are here; simulations/sweep_run.py runs the confirmation
experiment on Tune (``confirm_stage``).

Selection: per experiment (with per-strategy search tables: per strategy), the trial with
the best final-round [sweep] metric among the trials that ran every round (mode max|min).
Tuning runs usually evaluate on validation subjects (``server_val_fraction`` > 0) and
the confirmation on the test subjects (``set = { server_val_fraction = 0.0 }``).

Written to the sweep folder:
  tuned.json        per experiment: the selected trial, its tuned values and its score
  tune/confirm/     the confirmation runs (a Tune experiment; resumable like the others)
  comparison.csv    per strategy: the tuned values, the validation score, the test metric
                    (mean, std, n over seeds) and the paired difference to the baseline
                    (fedhar.stats.paired_difference: per-seed differences, 95% t interval)
  comparison.md     the same as a table for a README
"""

from __future__ import annotations

import json
import math

import pandas as pd

from fedhar.stats import mean_std, paired_difference
from simulations.config import FLConfig
from simulations.sweep import MANAGED, Sweep

CONFIRM = "confirm"


def final_rounds(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each ok trial's last round."""
    ok = df[df["status"] == "ok"]
    if not len(ok) or metric not in ok:
        return ok.iloc[0:0]
    return ok.loc[ok.groupby(["experiment", "trial_id"])["round"].idxmax()]


def scores_by_strategy(results: pd.DataFrame, metric: str) -> dict[str, pd.Series]:
    """strategy -> ``metric`` after each trial's last round, indexed by seed (for pairing)."""
    final = final_rounds(results, metric)
    return {s: g.set_index("seed")[metric].sort_index() for s, g in final.groupby("strategy")} if len(final) else {}


def select_best(sweep: Sweep, results: pd.DataFrame, params_of) -> dict:
    """Experiment -> {trial_id, score, values (tuned), config (FLConfig fields)};
    ``params_of(experiment, trial_id)``: the trial's config as Tune stored it."""
    s = sweep.settings
    final = final_rounds(results, s.metric)
    out = {}
    for exp in sweep.experiments():
        mine = final[(final["experiment"] == exp.name)].dropna(subset=[s.metric]) if len(final) else final
        if not len(mine):
            continue
        best = mine.loc[mine[s.metric].idxmax() if s.mode == "max" else mine[s.metric].idxmin()]
        config = params_of(exp.name, best["trial_id"])
        config = {k: v for k, v in config.items() if k not in MANAGED}
        tuned = [*exp.grid, *exp.search]
        out[exp.name] = {"trial_id": best["trial_id"], "score": float(best[s.metric]), "metric": s.metric,
                         "values": {k: config.get(k) for k in tuned}, "config": config,
                         "trials": int(mine["trial_id"].nunique())}
    return out


def confirm_space(sweep: Sweep, best: dict) -> dict:
    from ray import tune

    cases = []
    for name in sorted(best, key=lambda n: [e.name for e in sweep.experiments()].index(n)):
        for seed in sweep.confirm.seeds:
            cases.append({**best[name]["config"], **sweep.confirm.set, "seed": seed})
    return {"fl": tune.grid_search(cases)}


def comparison_table(sweep: Sweep, results: pd.DataFrame, best: dict) -> pd.DataFrame:
    """Per strategy: test metric over the seeds, and the paired difference to the baseline."""
    c = sweep.confirm
    per_seed = scores_by_strategy(results[results["experiment"] == CONFIRM], c.metric)
    base = per_seed.get(c.baseline, pd.Series(dtype=float))
    rows = []
    for chosen in best.values():
        strategy = chosen["config"].get("strategy", FLConfig.strategy)
        scores = per_seed.get(strategy, pd.Series(dtype=float))
        diff = paired_difference(scores, base)
        rows.append({
            "strategy": strategy, "tuned": json.dumps(chosen["values"], sort_keys=True),
            "trials_searched": chosen["trials"], f"validation_{chosen['metric']}": chosen["score"],
            f"test_{c.metric}_mean": scores.mean() if len(scores) else math.nan,
            f"test_{c.metric}_std": scores.std() if len(scores) > 1 else math.nan, "seeds": len(scores),
            f"test_{c.metric}": mean_std(scores),
            f"diff_vs_{c.baseline}": "(baseline)" if strategy == c.baseline else diff.text(),
            "diff_low": diff.low, "diff_high": diff.high,
            "verdict": "" if strategy == c.baseline else diff.verdict,
        })
    return pd.DataFrame(rows)


def comparison_markdown(df: pd.DataFrame, sweep: Sweep) -> str:
    c = sweep.confirm
    cols = ["strategy", "tuned", "trials_searched", f"validation_{sweep.settings.metric}", f"test_{c.metric}",
            f"diff_vs_{c.baseline}", "verdict"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.to_dict("records"):
        tuned = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in json.loads(r["tuned"]).items())
        cells = [tuned if k == "tuned" else f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
