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
                    (fedhar.stats.paired_difference: per-seed differences, 95% t interval; the
                    verdict Holm-corrected over the rules, fedhar.stats.holm), paired only
                    within one batch (fedhar.pairing; ``sweep_batch``)
  comparison.md     the same as a table for a README
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from fedhar.errors import FedharError
from fedhar.pairing import check_unique, pair
from fedhar.stats import holm, mean_std, paired_difference
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


def sweep_batch(sweep_dir: Path | None) -> dict:
    """The batch fields every trial of a sweep shares, from its sweep.json: the code (when every
    run of the sweep command was at one commit; results.csv records none per trial) and the
    torch threads per trial ([sweep] cpus_per_trial). {} when there is no sweep.json."""
    try:
        doc = json.loads((Path(sweep_dir) / "sweep.json").read_text())
    except (OSError, ValueError, TypeError):
        return {}
    codes = sorted({h.get("code") for h in doc.get("history", [doc])} - {None})
    threads = max(1, int(doc.get("settings", {}).get("cpus_per_trial", 1)))
    return {"code": codes[0] if len(codes) == 1 else f"one of {'/'.join(codes)} (resumed across commits)",
            "threads": threads}


def rows_by_strategy(results: pd.DataFrame, metric: str, batch: dict | None = None,
                     sweep_dir: Path | str = "") -> dict[str, pd.DataFrame]:
    """strategy -> its trials' last rounds (seed, ``metric``) with the batch fields fedhar.pairing
    checks: ``batch`` (``sweep_batch``), epochs = rounds x local epochs, backbone = what it was
    pretrained on (each seed pretrains its own); source = the trial's folder. A (strategy, seed)
    twice is an error naming both trials."""
    final = final_rounds(results, metric)
    if not len(final):
        return {}
    final = final.assign(source=[f"{sweep_dir}/tune/{e}/{t}" if sweep_dir else f"trial {e}/{t}"
                                 for e, t in zip(final["experiment"], final["trial_id"])], **(batch or {}))
    if {"rounds", "local_epochs"} <= set(final):
        final = final.assign(epochs=final["rounds"].astype(str) + " x " + final["local_epochs"].astype(str))
    if {"pretrain_data", "pretrain_epochs"} <= set(final):
        final = final.assign(backbone="pretrained on " + final["pretrain_data"].astype(str) + ", "
                             + final["pretrain_epochs"].astype(str) + " epochs")
    check_unique(final, ["strategy", "seed"], str(sweep_dir or "sweep"))
    return {s: g for s, g in final.groupby("strategy")}


def select_best(sweep: Sweep, results: pd.DataFrame, params_of) -> dict:
    """Experiment -> {trial_id, score, values (tuned), config (FLConfig fields)};
    ``params_of(experiment, trial_id)``: the trial's config as Tune stored it."""
    s = sweep.settings
    final = final_rounds(results, s.metric)
    out = {}

    def best_of(exp, trials: pd.DataFrame) -> dict:
        best = trials.loc[trials[s.metric].idxmax() if s.mode == "max" else trials[s.metric].idxmin()]
        config = params_of(exp.name, best["trial_id"])
        config = {k: v for k, v in config.items() if k not in MANAGED}
        tuned = [k for k in [*exp.grid, *exp.search] if not (sweep.tunes_per_seed and k == "seed")]
        return {"trial_id": best["trial_id"], "score": float(best[s.metric]), "metric": s.metric,
                "values": {k: config.get(k) for k in tuned}, "config": config,
                "trials": int(trials["trial_id"].nunique())}

    for exp in sweep.experiments():
        mine = final[(final["experiment"] == exp.name)].dropna(subset=[s.metric]) if len(final) else final
        if not len(mine):
            continue
        if not sweep.tunes_per_seed:
            out[exp.name] = best_of(exp, mine)
            continue
        # each confirmation seed's own selection, on its own validation subjects (Sweep.tunes_per_seed)
        by_seed = {str(int(seed)): best_of(exp, g) for seed, g in mine.groupby("seed")}
        first = next(iter(by_seed.values()))
        out[exp.name] = {"trial_id": ",".join(b["trial_id"] for b in by_seed.values()),
                         "score": sum(b["score"] for b in by_seed.values()) / len(by_seed), "metric": s.metric,
                         "values": {seed: b["values"] for seed, b in by_seed.items()}, "config": first["config"],
                         "trials": int(mine["trial_id"].nunique()), "by_seed": by_seed}
    return out


def confirm_space(sweep: Sweep, best: dict) -> dict:
    from ray import tune

    return {"fl": tune.grid_search(confirm_cases(sweep, best))}


def confirm_cases(sweep: Sweep, best: dict) -> list[dict]:
    """The confirmation runs: per experiment and [confirm] seed, the selected configuration (of
    that seed, when each seed was tuned on its own validation subjects) with [confirm] set."""
    cases = []
    for name in sorted(best, key=lambda n: [e.name for e in sweep.experiments()].index(n)):
        for seed in sweep.confirm.seeds:
            by_seed = best[name].get("by_seed")
            if by_seed is not None and str(seed) not in by_seed:
                continue  # no finished tuning trial at this seed: nothing selected for it
            chosen = by_seed[str(seed)] if by_seed is not None else best[name]
            cases.append({**chosen["config"], **sweep.confirm.set, "seed": seed})
    return cases


def _verdict(diff, p) -> str:
    if diff.n == 0 and p.refused:
        return "refused: not one batch"
    return diff.verdict + (f" [{p.n_refused} pairs refused: not one batch]" if p.refused else "")


def comparison_table(sweep: Sweep, results: pd.DataFrame, best: dict, sweep_dir: Path | None = None) -> pd.DataFrame:
    """Per strategy: test metric over the seeds, and the paired difference to the baseline
    (within one batch; the verdicts Holm-corrected over the rules compared)."""
    c = sweep.confirm
    per_seed = rows_by_strategy(results[results["experiment"] == CONFIRM], c.metric, sweep_batch(sweep_dir),
                                sweep_dir or "")
    empty = pd.DataFrame(columns=["seed", c.metric])
    base = per_seed.get(c.baseline, empty)
    chosen_by = [(chosen, chosen["config"].get("strategy", FLConfig.strategy)) for chosen in best.values()]
    pairings = [pair(per_seed.get(s, empty), base, c.metric, what=f"{s} - {c.baseline}") for _, s in chosen_by]
    diffs = [paired_difference(p.a, p.b) for p in pairings]
    family = holm([d for d, (_, s) in zip(diffs, chosen_by) if s != c.baseline])
    adjusted = iter(family)
    diffs = [d if s == c.baseline else next(adjusted) for d, (_, s) in zip(diffs, chosen_by)]
    rows = []
    for (chosen, strategy), diff, p in zip(chosen_by, diffs, pairings):
        scores = per_seed.get(strategy, empty)[c.metric].astype(float)
        rows.append({
            "strategy": strategy, "tuned": json.dumps(chosen["values"], sort_keys=True),
            "trials_searched": chosen["trials"], f"validation_{chosen['metric']}": chosen["score"],
            f"test_{c.metric}_mean": scores.mean() if len(scores) else math.nan,
            f"test_{c.metric}_std": scores.std() if len(scores) > 1 else math.nan, "seeds": len(scores),
            f"test_{c.metric}": mean_std(scores),
            f"diff_vs_{c.baseline}": "(baseline)" if strategy == c.baseline else diff.text(),
            "diff_low": diff.low, "diff_high": diff.high,
            **{k: math.nan if strategy == c.baseline else v  # the baseline against itself: no test
               for k, v in (("p_holm", diff.p), ("p_equivalent_holm", diff.p_equivalent), ("mdd", diff.mdd))},
            "verdict": "" if strategy == c.baseline else _verdict(diff, p),
            "refused": "; ".join(p.refused),
        })
    return pd.DataFrame(rows)


def comparison_markdown(df: pd.DataFrame, sweep: Sweep) -> str:
    c = sweep.confirm
    cols = ["strategy", "tuned", "trials_searched", f"validation_{sweep.settings.metric}", f"test_{c.metric}",
            f"diff_vs_{c.baseline}", "verdict"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    def values(tuned: dict) -> str:
        return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in tuned.items())

    for r in df.to_dict("records"):
        tuned = json.loads(r["tuned"])
        per_seed = tuned and all(isinstance(v, dict) for v in tuned.values())  # each seed tuned alone
        tuned = "; ".join(f"seed {k}: {values(v)}" for k, v in tuned.items()) if per_seed else values(tuned)
        cells = [tuned if k == "tuned" else f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rewrite_comparison(sweep_dir: Path) -> pd.DataFrame:
    """comparison.csv / .md of a finished sweep again from what it wrote (sweep.json's copy of the
    sweep file, results.csv, tuned.json), without running anything: after a change to the report."""
    import tempfile

    from simulations.sweep import load_sweep

    doc = json.loads((sweep_dir / "sweep.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(doc["file"]).name
        path.write_text(doc["content"])
        sweep = load_sweep(path)
    if sweep.confirm is None:
        raise FedharError(f"{sweep_dir / 'sweep.json'}: the sweep has no [confirm] table: nothing to compare")
    best = json.loads((sweep_dir / "tuned.json").read_text())
    table = comparison_table(sweep, pd.read_csv(sweep_dir / "results.csv"), best, sweep_dir)
    table.to_csv(sweep_dir / "comparison.csv", index=False)
    (sweep_dir / "comparison.md").write_text(comparison_markdown(table, sweep))
    return table


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m simulations.sweep_confirm",
                                     description="Rewrite a finished sweep's comparison.csv and comparison.md from its "
                                                 "results.csv, tuned.json and sweep.json (nothing is run).")
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder (fedhar sweep --out-dir), e.g. results/sweeps/fair_rules")
    args = parser.parse_args(argv)
    for name in ("sweep.json", "results.csv", "tuned.json"):
        if not (args.sweep_dir / name).is_file():
            print(f"sweep_confirm: error: {args.sweep_dir / name}: no such file (run the sweep to the end first)",
                  file=sys.stderr)
            return 2
    try:
        rewrite_comparison(args.sweep_dir)
    except FedharError as e:
        print(f"sweep_confirm: error: {e}", file=sys.stderr)
        return 2
    print((args.sweep_dir / "comparison.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
