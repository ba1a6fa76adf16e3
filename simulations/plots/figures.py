"""The figures, one function each: result tables in, PNG (+ SVG) and sidecar JSON out.

Every function takes its input path(s) and an output folder, writes NAME.png (dpi 150),
NAME.svg when ``svg=True`` and NAME.json (inputs with sha256, notes), and returns the
matplotlib Figure. ``where={"rank": "16"}`` keeps only the trials with those settings;
``title`` replaces the computed one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
    ScalarFormatter,
)

from fedhar.errors import DataFormatError, FedharError
from simulations.plots import style as st
from simulations.plots.tables import (
    NothingToPlot,
    Trace,
    Trials,
    classify,
    data_label,
    fmt,
    label,
    load_lodo,
    load_trials,
    read_run_config,
    read_table,
    spread,
    varying,
)

Paths = str | Path | Sequence[str | Path]

DRIFT_LABELS = {  # (axis label, caption): fedhar.drift defines the columns
    "rel_drift": ("relative client drift (unitless)",
                  r"rel_drift $= \Vert\Delta_k - \bar\Delta\Vert_F \,/\, \Vert\bar\Delta\Vert_F$"),
    "cosine": ("1 − cosine(client update, mean update) (unitless)",
               r"$1 - \cos(\Delta_k, \bar\Delta)$"),
}
INEXACTNESS_FORMULA = r"$\Vert\Sigma_k\, p_k B_k A_k - \bar{B}\bar{A}\Vert_F \,/\, \Vert\Sigma_k\, p_k B_k A_k\Vert_F$"
DRIFT_PARTS = {"BA": "B A / r", "A": "A", "B": "B"}
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1"}
MB_NOTE = "MB = 10^6 bytes"


def _data(frame: pd.DataFrame, column: str = "data") -> str:
    return data_label(frame[column].dropna().unique()) if column in frame else "data not recorded"


def _n(k: int, what: str) -> str:
    return f"n = {k} {what}{'s' if k != 1 else ''}"


def rule_flag(strategy, flag: str) -> bool | None:
    """A rule's ``exact`` / ``personalised`` flag (strategies.base.Rule); None for a name that does not resolve."""
    from strategies.registry import rule_class

    try:
        return bool(getattr(rule_class(str(strategy)), flag, False))
    except FedharError:
        return None


SCORE_NAMES = {**METRIC_NAMES, "server_accuracy": "server-side accuracy", "server_macro_f1": "server-side macro-F1",
               "heldout_accuracy": "held-out accuracy", "heldout_macro_f1": "held-out macro-F1"}


# --------------------------------------------------------------------------- 1. drift vs round

@st.styled
def drift_vs_round(inputs: Paths, out_dir: str | Path, *, metric: str = "rel_drift", part: str = "BA",
                   by: Sequence[str] = ("strategy",), where: dict | None = None, title: str | None = None,
                   svg: bool = False, name: str = "drift_vs_round") -> Figure:
    """Client drift per round, one line per strategy (mean over trials; band min-max over them).

    ``metric``: "rel_drift" (the sweep's drift_mean column, else the mean rel_drift of
    ``part`` in each trial's drift.csv) or "cosine" (1 - cosine, from the drift.csv files).
    ``part``: "BA" (the effective update B A / r), "A" or "B" (the raw factors); see fedhar.drift.
    """
    if metric not in DRIFT_LABELS:
        raise FedharError(f"drift metric must be one of {', '.join(DRIFT_LABELS)}, got {metric!r}")
    if part not in DRIFT_PARTS:
        raise FedharError(f"drift part must be one of {', '.join(DRIFT_PARTS)}, got {part!r}")
    trace, by = Trace(), list(by)
    src = classify(inputs)
    if not src.federated:
        raise NothingToPlot(f"drift vs round needs a sweep or run folders; got {src.describe()}")
    trials = load_trials(src, trace, required=by, purpose="the drift figure").where(where)
    drift = _drift(trials, metric, part, trace)
    summary = trials.summary().set_index("trial_id")
    drift["group"] = [label(summary.loc[t], by) for t in drift["trial_id"]]
    groups = sorted(drift["group"].unique())
    colour, marker = st.colours(groups), st.markers(groups)

    fig, (ax,) = st.new_figure()
    finals, banded = {}, False
    for g in groups:
        piv = drift[drift["group"] == g].pivot_table(index="round", columns="trial_id", values="value", aggfunc="mean")
        mean, n = piv.mean(axis=1), piv.shape[1]
        last_values = piv.iloc[-1].dropna()
        ax.plot(mean.index, mean.to_numpy(), color=colour[g], marker=marker[g],
                label=g + (f" (mean of {n} trials)" if n > 1 else ""))
        if n > 1:
            ax.fill_between(mean.index, piv.min(axis=1), piv.max(axis=1), color=colour[g], alpha=0.18, linewidth=0)
            banded = True
        finals[g] = (mean.index[-1], mean.iloc[-1], mean.iloc[0], last_values.min(), last_values.max(), n)
    ax.set_xlabel("federated round")
    ax.set_ylabel(DRIFT_LABELS[metric][0])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.legend(title=", ".join(by))
    ids = list(dict.fromkeys(drift["trial_id"]))
    mixed = spread(summary.loc[ids], [c for c in (*trials.settings, "seed") if c not in by])
    st.caption(ax, f"{DRIFT_LABELS[metric][1]} of the update $\\Delta_k$ of {DRIFT_PARTS[part]} (part {part}), "
               "mean over clients and LoRA layers"
               + (f"; lines average over {mixed}" if mixed else "")
               + ("; band: min–max over trials" if banded else ""))
    if len(groups) == 1:
        (g, (last_round, last, first, *_)), = finals.items()
        if abs(last - first) <= 0.02 * max(abs(first), 1e-12):  # within 2%: no trend to name
            message = f"Client drift under {g} stays at about {last:.3g} up to round {fmt(last_round)}"
        else:
            verb = "rises" if last > first else "falls"
            message = f"Client drift under {g} {verb} from {first:.3g} to {last:.3g} by round {fmt(last_round)}"
    else:
        low = min(finals, key=lambda g: finals[g][1])
        high = max(finals, key=lambda g: finals[g][1])
        # a ranking needs repeated trials whose ranges at the last round do not overlap
        separated = min(finals[g][5] for g in (low, high)) > 1 and finals[low][4] < finals[high][3]
        message = (f"{low} drifts least ({finals[low][1]:.3g} at its last round) and {high} most ({finals[high][1]:.3g})"
                   if separated else
                   f"Last-round drift from {finals[low][1]:.3g} ({low}) to {finals[high][1]:.3g} ({high}); "
                   "the ranges over trials overlap or are single trials, so no strategy is shown to drift less")
    st.title(fig, title or f"Client drift per round · {_data(summary.loc[ids])} · {_n(len(ids), 'trial')}")
    return st.save(fig, out_dir, name, trace, kind="drift", message=message, svg=svg)


def _drift(trials: Trials, metric: str, part: str, trace: Trace) -> pd.DataFrame:
    """trial_id, round, value: the drift of each trial and round."""
    rounds = trials.rounds
    if (metric == "rel_drift" and part == "BA" and "drift_mean" in rounds.columns
            and rounds["drift_mean"].notna().any()):
        d = rounds[["trial_id", "round", "drift_mean"]].rename(columns={"drift_mean": "value"})
        trace.note("drift: the drift_mean column of the sweep table")
        return d[np.isfinite(d["value"])].copy()
    column = "rel_drift" if metric == "rel_drift" else "cosine"
    frames, missing, other_parts = [], [], {}
    for tid in trials.ids:
        path = trials.dirs[tid] / "drift.csv"
        if not path.is_file():
            missing.append(tid)
            continue
        df = read_table(path, trace, ("round", "part", column), numeric=("round", column),
                        purpose=f"the drift figure ({metric})")
        parts = df["part"].astype(str).str.strip()
        ba = df[parts == part]
        if ba.empty:
            other_parts[path] = sorted(set(parts))
            trace.note(f"{path}: no rows with part {part!r} (it has {', '.join(other_parts[path]) or 'none'}); "
                       "trial left out")
            continue
        value = ba[column] if metric == "rel_drift" else 1 - ba[column]
        ok = np.isfinite(value)
        per = value[ok].groupby(ba["round"][ok]).mean()
        frames.append(pd.DataFrame({"trial_id": tid, "round": per.index.to_numpy(float), "value": per.to_numpy()}))
    if not frames:
        if other_parts:
            path, has = next(iter(other_parts.items()))
            raise NothingToPlot(f"{path}: no rows with part {part!r} (it has {', '.join(has) or 'none'}"
                                + (f"; try --part {has[0]}" if has else "") + ")")
        tid = trials.ids[0]
        table = trials.tables[tid]
        if trials.dirs[tid] == table.parent:  # a run folder
            raise NothingToPlot(f"{table.parent / 'drift.csv'}: no such file (the run recorded no client drift)")
        if metric == "rel_drift":
            raise NothingToPlot(f"{table}: missing column 'drift_mean' (needed for the drift figure), and no "
                                "trials/<trial_id>/drift.csv beside it")
        raise NothingToPlot(f"{table}: no trials/<trial_id>/drift.csv beside it: 1 − cosine needs each trial's "
                            "drift.csv (the 'drift_mean' column is the mean rel_drift only)")
    if missing:
        trace.note(f"no drift.csv for {len(missing)} trial(s), left out: {', '.join(missing)}")
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------ 2. inexactness vs epochs, clients

@st.styled
def inexactness_scaling(inputs: Paths, out_dir: str | Path, *, by: Sequence[str] = ("strategy",),
                        where: dict | None = None, title: str | None = None, svg: bool = False,
                        name: str = "inexactness") -> Figure:
    """Aggregation inexactness (mean over rounds and layers) vs local epochs and vs clients per round.

    Each panel holds the other factor at its most common value; points are means over the
    trials there, bars their min-max.
    """
    trace, by = Trace(), list(by)
    src = classify(inputs)
    if not src.federated:
        raise NothingToPlot(f"inexactness needs a sweep or run folders; got {src.describe()}")
    trials = load_trials(src, trace, required=by, purpose="the inexactness figure").where(where)
    summary = aggregation_error(trials, trace)
    table = trials.tables[trials.ids[0]]
    panels = []
    if "local_epochs" in summary.columns:
        panels.append(("local_epochs", "local epochs per round (E)", "E"))
    else:
        trace.note(f"{table}: no 'local_epochs' column; no panel against local epochs")
    clients = next((c for c in ("clients_trained", "num_clients") if c in summary and summary[c].notna().any()), None)
    if clients:
        panels.append((clients, "clients aggregated per round (K)" if clients == "clients_trained"
                       else "clients in the federation (num_clients)", "K"))
    else:
        trace.note(f"{table}: no 'clients_trained' or 'num_clients' column; no panel against clients")
    if not panels:
        raise DataFormatError(table, "missing columns 'local_epochs' and 'clients_trained' (needed for the "
                                     "inexactness figure)")
    if all(summary[x].nunique() < 2 for x, _, _ in panels):
        raise NothingToPlot(f"{trials.describe()}: neither local epochs nor the clients per round vary across "
                            "trials; nothing to plot inexactness against")
    for x, xlabel, _ in [p for p in panels if summary[p[0]].nunique() < 2]:
        trace.note(f"no panel against {xlabel}: one value only ({fmt(summary[x].iloc[0])})")
    panels = [p for p in panels if summary[p[0]].nunique() >= 2]
    summary["group"] = [label(row, by) for _, row in summary.iterrows()]
    groups = sorted(summary["group"].unique())
    colour, marker = st.colours(groups), st.markers(groups)

    fig, axes = st.new_figure(len(panels), width=5.2)
    messages = []
    for ax, (x, xlabel, symbol) in zip(axes, panels):
        others = [o for o, _, _ in panels if o != x]
        sub, fixed = summary, ""
        for o in others:
            if summary[o].nunique() > 1:
                keep = summary[o].mode().sort_values().iloc[0]
                sub = sub[sub[o] == keep]
                fixed = (f"E = {fmt(keep)} local epoch{'s' if keep != 1 else ''}" if o == "local_epochs"
                         else f"K = {fmt(keep)} clients")
        xs = sorted(sub[x].dropna().unique())
        width = 0.04 * ((xs[-1] - xs[0]) if len(xs) > 1 else 1.0)  # groups side by side: the exact rules all sit at 0
        for i, g in enumerate(groups):
            stats = sub[sub["group"] == g].groupby(x)["inexactness"].agg(["mean", "min", "max"])
            if stats.empty:
                continue
            ax.errorbar(stats.index + width * (i - (len(groups) - 1) / 2), stats["mean"],
                        yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                        color=colour[g], marker=marker[g], capsize=3, label=g,
                        ls="-" if len(stats) > 2 else "none")  # no trend line through two points
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("aggregation error of the rule (unitless)")
        ax.set_ylim(0, 1.15 * max(sub["inexactness"].max(), 1e-3))
        single = sub.groupby(["group", x]).size().max() == 1
        ax.legend(title=", ".join(by))
        skip = (*by, x, *others, *(["num_clients", "fraction_train"] if clients == "clients_trained" else []))
        mixed = spread(sub, [c for c in (*trials.settings, "seed") if c not in skip])
        note = ("not varied in this sweep; " if len(xs) < 2 else "") + (f"at {fixed}; " if fixed else "")
        exact = sorted({fmt(g) for g in sub.get("strategy", pd.Series(dtype=object)).dropna()
                        if rule_flag(g, "exact")})
        st.caption(ax, note + "the rule's own error: " + INEXACTNESS_FORMULA + ", mean over rounds and layers"
                   + (f"; {', '.join(exact)}: exact, 0 by construction" if exact else "")
                   + (f"; averages over {mixed}" if mixed else "")
                   + ("; one trial per point: no interval" if single else "; bars: min–max over trials")
                   + ("; rules side by side at each value" if len(groups) > 1 else ""), width=62)
        inexact = sub[[g not in exact for g in sub.get("strategy", pd.Series("", index=sub.index)).map(fmt)]]
        if len(xs) > 1 and not inexact.empty:  # the trend of the rules that have an error (the exact ones stay at 0)
            means = inexact.groupby(x)["inexactness"].mean()
            a, b = means.iloc[0], means.iloc[-1]
            verb = "grows" if b > 1.05 * a else "shrinks" if b < 0.95 * a else "barely changes"
            if messages and messages[-1].startswith(verb + " "):
                verb = ""
            messages.append(f"{verb + ' ' if verb else ''}with {'local epochs' if symbol == 'E' else 'clients'} "
                            f"(inexact rules' mean "
                            f"{a:.3g} at {symbol}={fmt(xs[0])} → {b:.3g} at {symbol}={fmt(xs[-1])}"
                            + ("; one trial per point, no interval" if single else "") + ")")
    message = "Aggregation error " + " and ".join(messages)
    st.title(fig, title or f"Aggregation error of each rule · {_data(summary)} · {_n(len(summary), 'trial')}")
    return st.save(fig, out_dir, name, trace, kind="inexactness", message=message, svg=svg)


def aggregation_error(trials: Trials, trace: Trace) -> pd.DataFrame:
    """trials.summary() with column ``inexactness``: each trial's rule's own aggregation error,
    mean over rounds and layers. A rule whose aggregate is exactly sum_k p_k s_k B_k A_k (``Rule.exact``:
    FFA-LoRA, FedEx-LoRA, FLoRA; fedhar/lora_math.py) has none: 0, whatever gap its clients' factors
    have (FedEx sends that gap as a residual, FLoRA stacks). Every other rule's is the logged gap
    ||sum_k p_k B_k A_k - mean(B) mean(A)|| / ||sum_k p_k B_k A_k|| of what it averages. Trials with
    neither (FedSA-LoRA: no global B) are left out, with a note."""
    summary = trials.summary()
    exact = (summary["strategy"].map(lambda name: rule_flag(name, "exact")).fillna(False).astype(bool)
             if "strategy" in summary else pd.Series(False, index=summary.index))
    # nothing logged is an error (naming the table) unless exact rules make the figure anyway
    summary["inexactness"] = summary["trial_id"].map(_inexactness(trials, trace, required=not exact.any()))
    if "strategy" in summary:
        if exact.any():
            summary.loc[exact, "inexactness"] = 0.0
            trace.note("exact rules, plotted at 0 (no aggregation error by construction): "
                       + ", ".join(sorted(summary.loc[exact, "strategy"].map(fmt).unique())))
    if summary["inexactness"].isna().any():
        trace.note("no aggregation error for trial(s) " + ", ".join(summary.loc[summary["inexactness"].isna(), "trial_id"])
                   + " (a personalised rule, or no inexactness logged); left out")
        summary = summary.dropna(subset=["inexactness"])
    if summary.empty:
        raise NothingToPlot(f"{trials.describe()}: no trial logged an aggregation inexactness")
    return summary


def _inexactness(trials: Trials, trace: Trace, required: bool = True) -> pd.Series:
    """trial_id -> mean inexactness over rounds (and layers)."""
    rounds = trials.rounds
    if "inexactness_mean" in rounds.columns and rounds["inexactness_mean"].notna().any():
        trace.note("inexactness: the inexactness_mean column of the sweep table")
        ok = rounds[np.isfinite(rounds["inexactness_mean"])]
        return ok.groupby("trial_id")["inexactness_mean"].mean()
    values, missing = {}, []
    for tid in trials.ids:
        path = trials.dirs[tid] / "inexactness.csv"
        if not path.is_file():
            missing.append(tid)
            continue
        df = read_table(path, trace, ("round", "inexactness"), numeric=("round", "inexactness"),
                        purpose="the inexactness figure")
        finite = df["inexactness"][np.isfinite(df["inexactness"])]
        if len(finite) < len(df):
            trace.note(f"{path}: {len(df) - len(finite)} missing or infinite value(s) left out")
        if len(finite):
            values[tid] = finite.mean()
    if not values and not required:
        return pd.Series(dtype=float)
    if not values:
        tid = trials.ids[0]
        table = trials.tables[tid]
        if trials.dirs[tid] == table.parent:
            raise NothingToPlot(f"{table.parent / 'inexactness.csv'}: no such file (the run recorded no "
                                "inexactness)")
        raise NothingToPlot(f"{table}: missing column 'inexactness_mean' (needed for the inexactness figure), "
                            "and no trials/<trial_id>/inexactness.csv beside it")
    if missing:
        trace.note(f"no inexactness.csv for {len(missing)} trial(s), left out: {', '.join(missing)}")
    return pd.Series(values)


# ------------------------------------------------------------------- 3. accuracy per client

@st.styled
def accuracy_per_client(run: str | Path, out_dir: str | Path, *, metric: str = "accuracy", title: str | None = None,
                        svg: bool = False, name: str = "accuracy_per_client") -> Figure:
    """Each client's test accuracy per round (clients.csv, phase evaluate), with the example-weighted
    mean and, when the run has them, the server and held-out curves drawn thicker."""
    if metric not in METRIC_NAMES:
        raise FedharError(f"metric must be one of {', '.join(METRIC_NAMES)}, got {metric!r}")
    trace = Trace()
    src = classify(run)
    if len(src.runs) != 1 or src.sweeps or src.lodo:
        raise NothingToPlot(f"accuracy per client takes one run folder (with clients.csv); got {src.describe()}")
    run_dir = src.runs[0]
    path = run_dir / "clients.csv"
    df = read_table(path, trace, ("round", "phase", "status", metric), purpose="the accuracy-per-client figure")
    who = next((c for c in ("client", "partition_id", "node_id") if c in df.columns), None)
    if who is None:
        raise DataFormatError(path, "missing required column 'client' (or 'partition_id'; needed for the "
                                    "accuracy-per-client figure)")
    if who != "client":
        trace.note(f"{path}: no 'client' column; clients are named by {who}")
    df["who"] = df[who].map(fmt)
    phase = df["phase"].astype(str).str.strip()
    status = df["status"].astype(str).str.strip().str.lower()
    ok = df[status == "ok"]
    weighted = "num_examples" in df.columns
    if not weighted:
        trace.note(f"{path}: no 'num_examples' column; the mean over clients is unweighted")
    evaluate = ok[(phase[status == "ok"] == "evaluate") & ok[metric].notna()]
    if evaluate.empty:
        raise NothingToPlot(f"{path}: no evaluate rows with status ok and a {metric}")
    failures = df[(status != "ok") & (status != "nan") & phase.isin(["train", "evaluate"])]
    for _, row in failures.iterrows():
        trace.note(f"{row['who']}: {row['status']} in round {fmt(row['round'])} ({row['phase']})")
    rounds = sorted(df["round"].dropna().unique())
    order = (evaluate.sort_values("partition_id") if "partition_id" in evaluate else evaluate)["who"]
    clients = list(dict.fromkeys(order))
    many = len(clients) > 5
    palette = dict(zip(clients, [c for c in st.OKABE_ITO if c not in ("#000000", "#D55E00", "#CC79A7")]))

    fig, (ax,) = st.new_figure(width=7.0)
    last = {}
    for i, c in enumerate(clients):
        series = evaluate[evaluate["who"] == c].groupby("round")[metric].mean().reindex(rounds)
        lab = c if not many else (f"clients (n={len(clients)})" if i == 0 else "_nolegend_")
        ax.plot(rounds, series.to_numpy(), color=st.GREY if many else palette[c], lw=1.2, marker="o", ms=3.5,
                alpha=0.7 if many else 1.0, label=lab)
        if series.notna().any():
            last[c] = series.dropna().iloc[-1]
    ax.plot(rounds, _mean_curve(evaluate, metric, weighted).reindex(rounds).to_numpy(), color="#000000", lw=2.6,
            ls="--", label="mean over clients" + (" (example-weighted)" if weighted else ""))
    extra = {}  # phase -> curve: the server's evaluations, thicker
    for ph, colour, mark, what in (("server", "#D55E00", "D", "server test subjects"),
                                   ("heldout", "#CC79A7", "s", "held out")):
        rows = ok[(phase[status == "ok"] == ph) & ok[metric].notna()]
        names = [n.split(":", 1)[-1] for n in dict.fromkeys(rows["who"])]
        curve = _mean_curve(rows, metric, weighted)
        if curve.empty and (run_dir / "rounds.csv").is_file():
            table = read_table(run_dir / "rounds.csv", trace, ("round",), purpose=f"the {ph} curve")
            if f"{ph}_{metric}" in table.columns:
                curve = table.set_index("round")[f"{ph}_{metric}"].dropna()
        if curve.empty:
            trace.note(f"{run_dir}: no {ph} evaluation (phase {ph} in clients.csv, {ph}_{metric} in rounds.csv)")
            continue
        extra[ph] = curve
        lab = (f"{what}: {', '.join(names)}" if 0 < len(names) <= 2 else
               f"{what} (mean of {len(names)} datasets)" if names else what)
        ax.plot(curve.index, curve.to_numpy(), color=colour, lw=3.2, marker=mark, ms=5, label=lab)
    if many and last:  # name the best and the worst client at the end of their lines
        for c in {min(last, key=last.get), max(last, key=last.get)}:
            ax.annotate(c, (rounds[-1], last[c]), xytext=(4, 0), textcoords="offset points", fontsize=7.5,
                        va="center", color="#333333")
    ax.set_xlabel("federated round")
    ax.set_ylabel(f"test {METRIC_NAMES[metric]} (%)")
    st.honest_score_axis(ax, [*evaluate[metric], *[v for c in extra.values() for v in c]])
    st.percent_axis(ax.yaxis)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2, frameon=False)  # never over a client's line
    st.caption(ax, f"{run_dir}: every client's {METRIC_NAMES[metric]} on its own test split after each round"
               + ("; gaps: no evaluation that round" if evaluate.groupby("who").size().min() < len(rounds) else ""))
    final = evaluate[evaluate["round"] == evaluate["round"].max()].groupby("who")[metric].mean()
    worst, best = final.idxmin(), final.idxmax()
    message = (f"After round {fmt(evaluate['round'].max())}, client {METRIC_NAMES[metric]} ranges from "
               f"{final[worst]:.0%} ({worst}) to {final[best]:.0%} ({best})")
    if "heldout" in extra:
        message += f"; held out: {extra['heldout'].iloc[-1]:.0%}"
    settings = read_run_config(run_dir, trace) or {}
    data = data_label([settings["data"]]) if "data" in settings else "data not recorded"
    st.title(fig, title or f"Accuracy per client and round · {data} · one run, {len(clients)} clients")
    return st.save(fig, out_dir, name, trace, kind="clients", message=message, svg=svg)


def _mean_curve(rows: pd.DataFrame, metric: str, weighted: bool) -> pd.Series:
    rows = rows[rows[metric].notna()]
    if rows.empty:
        return pd.Series(dtype=float)
    if not weighted or rows["num_examples"].isna().any():
        return rows.groupby("round")[metric].mean()
    w = rows["num_examples"].astype(float)
    return (rows[metric] * w).groupby(rows["round"]).sum() / w.groupby(rows["round"]).sum()


# ------------------------------------------------------------ 4. accuracy vs bytes (Pareto)

#: the Pareto figures' score unless told otherwise (`fedhar plot pareto`, `plot all`, make_figures.sh):
#: the global model on the server's test subjects, the one score every rule is comparable on
#: (the clients' own scores are personalised models' for FedSA-LoRA); runs without it fall back
#: to the clients' accuracy, with personalised rules marked
PARETO_METRIC = "server_accuracy"
CLIENT_SCORES = ("accuracy", "macro_f1")


@st.styled
def accuracy_vs_bytes(inputs: Paths, out_dir: str | Path, *, metric: str | None = None, where: dict | None = None,
                      title: str | None = None, svg: bool = False, name: str = "accuracy_vs_bytes") -> Figure:
    """Final-round accuracy vs cumulative bytes up + down (MB), one point per configuration
    (mean over seeds; bars min-max), every configuration its own colour and marker, the Pareto
    front ringed. metric: PARETO_METRIC by default (else "accuracy" where no trial has it)."""
    if metric is not None and metric not in SCORE_NAMES:
        raise FedharError(f"metric must be one of {', '.join(SCORE_NAMES)}, got {metric!r}")
    trace = Trace()
    src = classify(inputs)
    if not src.federated:
        raise NothingToPlot(f"accuracy vs bytes needs a sweep or run folders; got {src.describe()}")
    trials = load_trials(src, trace, required=("strategy", *([metric] if metric else []), "bytes_up", "bytes_down"),
                         purpose="the accuracy-vs-bytes figure").where(where)
    if metric is None:
        has_server = PARETO_METRIC in trials.rounds and trials.rounds[PARETO_METRIC].notna().any()
        metric = PARETO_METRIC if has_server else "accuracy"
        if not has_server:
            trace.note(f"no {PARETO_METRIC} (the run had no server test subjects): the clients' accuracy instead")
    s = trials.summary().dropna(subset=[metric, "mb"])
    keys = varying(s, trials.settings) or ["strategy"]
    points = (s.groupby(keys, dropna=False, sort=True)
              .agg(acc=(metric, "mean"), lo=(metric, "min"), hi=(metric, "max"), mb=("mb", "mean"),
                   n=(metric, "size")).reset_index())
    if len(points) < 2:
        raise NothingToPlot(f"{trials.describe()}: accuracy vs bytes needs at least two configurations; "
                            f"found {len(points)}")
    if "strategy" not in points:
        points["strategy"] = s["strategy"].iloc[0]
    # name a configuration by the settings that tell configurations apart (not by one set only for some)
    named = [k for k in keys if points[k].dropna().map(fmt).nunique() > 1] or keys
    # the clients' own scores of a personalised rule (FedSA-LoRA) are not a global model's: marked, off the front
    points["personalised"] = (metric in CLIENT_SCORES) & points["strategy"].map(
        lambda name: bool(rule_flag(name, "personalised")))
    points["label"] = [label(row, named) + (" (personalised)" if row["personalised"] else "")
                       for _, row in points.iterrows()]
    points = points.sort_values("label").reset_index(drop=True)
    # every configuration its own colour and marker, named in the legend (labels on the points overlap)
    colour, marker = st.colours(points["label"]), st.markers(points["label"])
    comparable = points[~points["personalised"]]
    front = comparable.index[_pareto(comparable["mb"].to_numpy(), comparable["acc"].to_numpy())]
    log_x = points["mb"].max() > 5 * points["mb"].min() > 0
    points["x"], dodged = _dodge(points["mb"], log_x)

    fig, (ax,) = st.new_figure(width=7.6, height=4.8)
    for _, p in points.iterrows():
        c, m = colour[p["label"]], marker[p["label"]]
        if p["n"] > 1:
            ax.errorbar(p["x"], p["acc"], yerr=[[p["acc"] - p["lo"]], [p["hi"] - p["acc"]]], fmt="none",
                        ecolor=c, elinewidth=1, capsize=3)
        ax.scatter(p["x"], p["acc"], color=c, marker=m, s=52, zorder=3, edgecolors="white", linewidths=0.6,
                   label=p["label"] + (f" (n={int(p['n'])})" if p["n"] > 1 else ""))
    on = points.loc[front].sort_values("mb")
    ax.scatter(on["x"], on["acc"], s=190, facecolors="none", edgecolors="#000000", linewidths=1.1, zorder=2,
               label="Pareto-optimal (ringed; dashed: the front)")
    if len(on) > 1:
        ax.step(on["x"], on["acc"], where="post", color="#000000", lw=1.0, ls="--", zorder=2)
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))  # several labelled ticks
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 1.0))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.08)
    ax.set_xlabel(f"communicated, cumulative upload + download (MB; {MB_NOTE})")
    ax.set_ylabel(f"final-round test {SCORE_NAMES[metric]} (%)")
    st.honest_score_axis(ax, [*points["lo"], *points["hi"]])
    st.percent_axis(ax.yaxis)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title=" / ".join(named), frameon=False)
    seeds = points["n"].max()
    whose = ("the global model on the server's test subjects" if metric.startswith(("server", "heldout")) else
             "the clients' test windows: the global model" + ("; personalised models (each client's own B) where "
                                                              "marked, left off the front"
                                                              if points["personalised"].any() else ""))
    st.caption(ax, f"one point per configuration; {SCORE_NAMES[metric]} after the last round ({whose}); bytes "
               "summed over all rounds and clients"
               + ("; points at equal MB spread sideways to stay visible" if dodged else "")
               + (f"; mean over up to {seeds} trials (seeds), bars: min–max" if seeds > 1
                  else "; one trial each: no interval"))
    best = comparable.loc[comparable["acc"].idxmax()]
    cheap = on.iloc[0]
    message = (f"{len(on)} of {len(comparable)} configurations {'is' if len(on) == 1 else 'are'} Pareto-optimal"
               + (f" ({int(points['personalised'].sum())} personalised left out)" if points["personalised"].any() else "")
               + ": "
               f"{best['label']} is most accurate "
               f"({best['acc']:.1%}, {best['mb']:,.1f} MB)")
    if cheap["label"] != best["label"]:
        message += f", {cheap['label']} cheapest ({cheap['mb']:,.1f} MB, {cheap['acc']:.1%})"
    st.title(fig, title or f"Final accuracy vs communicated MB · {_data(s)} · {_n(len(points), 'configuration')}"
             + (f", {_n(int(seeds), 'seed')} max" if seeds > 1 else ", one trial each"))
    return st.save(fig, out_dir, name, trace, kind="pareto", message=message, svg=svg)


def _dodge(mb: pd.Series, log_x: bool) -> tuple[pd.Series, bool]:
    """x positions: points at (nearly) the same MB side by side instead of on top of each other,
    a fixed step apart (in log10 MB on a log axis); whether any was moved."""
    t = np.log10(mb) if log_x else mb.astype(float)
    span = float(t.max() - t.min()) or 1.0
    step, x, moved = 0.02 * span, t.copy(), False
    order = t.sort_values()
    clusters, current = [], [order.index[0]]
    for i in order.index[1:]:
        if t[i] - t[current[-1]] < 0.01 * span:
            current.append(i)
        else:
            clusters.append(current)
            current = [i]
    clusters.append(current)
    for members in clusters:
        if len(members) > 1:
            centre = t[members].mean()
            for k, i in enumerate(sorted(members)):
                x[i] = centre + step * (k - (len(members) - 1) / 2)
            moved = True
    return (10 ** x if log_x else x), moved


def _pareto(cost: np.ndarray, gain: np.ndarray) -> list[int]:
    """Indices of the points no other point beats (no more cost, no less gain, one strictly better)."""
    front, best = [], -np.inf
    for i in sorted(range(len(cost)), key=lambda i: (cost[i], -gain[i])):
        if gain[i] > best:
            front.append(i)
            best = gain[i]
    return front


# ------------------------------------------------------------------------ 5. rank ablation

@st.styled
def rank_ablation(inputs: Paths, out_dir: str | Path, *, where: dict | None = None,
                  train_fraction: float | None = None, title: str | None = None, svg: bool = False,
                  name: str = "rank_ablation") -> Figure:
    """Accuracy and macro-F1 vs LoRA rank: federated lines from a sweep (final round, mean over
    seeds), centralised lines from LODO runs.csv (dashed); full fine-tuning as a dotted level."""
    trace = Trace()
    src = classify(inputs)
    if src.federated and src.lodo:
        raise NothingToPlot("rank ablation: give federated runs (a sweep or run folders) or LODO tables, not both: "
                          "they are different experiments (data, protocol, ranks) and would share the axes")
    series, levels = [], []  # series: (label, style, rows with rank + metrics); levels: (label, colour, rows)
    if src.federated:
        trials = load_trials(src, trace, required=("rank", "accuracy"), purpose="the rank ablation").where(where)
        s = trials.summary()
        full = s["mode"].map(fmt) == "full" if "mode" in s else pd.Series(False, index=s.index)
        if full.any():
            levels.append(("full fine-tuning (federated)", st.GREY, s[full], "federated"))
        s = s[~full]
        keys = [k for k in varying(s, trials.settings) if k != "rank"]
        for _key, rows in (s.groupby(keys, sort=True, dropna=False) if keys else [("", s)]):
            series.append(("federated" + (": " + label(rows.iloc[0], keys) if keys else ""), "-", rows, "federated"))
    if src.lodo:
        rows = load_lodo(src.lodo, trace, ("rank",), purpose="the rank ablation", train_fraction=train_fraction)
        mode = rows["mode"].astype(str)
        for held, g in rows[mode == "full"].groupby("held_out"):
            levels.append((f"full fine-tuning (LODO {held})", "#000000", g, f"LODO {held}"))
        for (held, m), g in rows[mode.isin(["lora", "qlora"])].groupby(["held_out", "mode"], sort=True):
            series.append((f"LODO {held}: {m}", "--", g, f"LODO {held}"))
    # an ablation needs two ranks: keep the federation / held-out sets where some line has them
    ablated = {family for _, _, rows, family in series if rows["rank"].nunique() >= 2}
    single = sorted({family for *_, family in series} - ablated)
    if single and ablated:
        trace.note(f"left out (one LoRA rank only): {', '.join(single)}")
        series = [x for x in series if x[3] in ablated]
        levels = [x for x in levels if x[3] in ablated]
    ranks = sorted({r for _, _, rows, _ in series for r in rows["rank"].dropna()})
    if len(ranks) < 2:
        raise NothingToPlot(f"rank ablation needs runs at two or more LoRA ranks; {src.describe()} "
                            f"hold{'s' if len(ranks) == 1 else ''} {'only rank ' + fmt(ranks[0]) if ranks else 'none'}")
    metrics = ["accuracy"] + (["macro_f1"] if any("macro_f1" in r and r["macro_f1"].notna().any()
                                                   for _, _, r, _ in series) else [])
    if len(metrics) == 1:
        trace.note("no macro_f1 values; accuracy only")
    colour = st.colours(lab for lab, *_ in series)
    marker = st.markers(lab for lab, *_ in series)

    fig, axes = st.new_figure(len(metrics), width=5.4, height=4.6)
    deltas = []
    for ax, metric in zip(axes, metrics):
        for lab, ls, rows, _ in series:
            stats = rows.groupby("rank")[metric].agg(["mean", "min", "max", "size"]).dropna(subset=["mean"])
            if stats.empty:
                continue
            # a line only through points of the same n: a 2-seed mean joined to single runs reads as a trend
            same_n = stats["size"].nunique() == 1
            ax.errorbar(stats.index, stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                        color=colour[lab], marker=marker[lab], ls=ls if len(stats) > 2 and same_n else "none",
                        capsize=3, label=lab)
            if not same_n:
                for r, row in stats.iterrows():
                    ax.annotate(f"n={int(row['size'])}", (r, row["mean"]), xytext=(5, -10), textcoords="offset points",
                                fontsize=7, color=colour[lab])
            if metric == "accuracy" and len(stats) > 1:
                source = "LODO" if lab.startswith("LODO") else "federated"
                deltas.append((source, stats.index[0], stats.index[-1], stats["mean"].iloc[-1] - stats["mean"].iloc[0]))
        for lab, c, rows, _ in levels:
            if metric in rows and rows[metric].notna().any():
                ax.axhline(rows[metric].mean(), color=c, ls=":", lw=1.4, label=lab)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ranks))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("LoRA rank r (log scale)")
        ax.set_ylabel(f"test {METRIC_NAMES[metric]} (%)")
        st.honest_score_axis(ax, [v for _, _, rows, _ in series + [(0, 0, r, 0) for _, _, r, _ in levels]
                                  if metric in rows for v in rows[metric]])
        st.percent_axis(ax.yaxis)
    axes[0].legend(loc="lower right")
    seeds = max(int(rows.groupby("rank").size().max()) for _, _, rows, _ in series)
    for ax, metric in zip(axes, metrics):
        parts = (["federated: after the last round"] if src.federated else []) + \
                (["LODO: on the held-out dataset's test subjects"] if src.lodo else [])
        st.caption(ax, f"{METRIC_NAMES[metric]}, " + "; ".join(parts) + ("; dotted: full fine-tuning" if levels else "")
                   + (f"; mean over up to {seeds} runs (seeds), bars: min–max; n per point where it differs, "
                      "no line joining them" if seeds > 1 else "; one run per point: no interval"), width=62)
    messages = []
    for source in dict.fromkeys(d[0] for d in deltas):
        mine = [d for d in deltas if d[0] == source]
        mean = float(np.mean([d[3] for d in mine]))
        lo, hi = min(d[1] for d in mine), max(d[2] for d in mine)
        verb = "barely changes accuracy" if abs(mean) < 0.005 else f"changes accuracy by {mean * 100:+.1f} pp"
        messages.append(f"{source}, rank {fmt(lo)} → {fmt(hi)} {verb}"
                        + (f" (mean over {len(mine)} settings)" if len(mine) > 1 else ""))
    message = ("Raising the LoRA rank: " + "; ".join(messages)) if messages else "Accuracy against LoRA rank"
    if src.federated:
        what = f"federated · {_data(s)}"
    else:
        what = f"centralised LODO · {_data(rows, 'held_out')} held out"
    st.title(fig, title or f"Accuracy vs LoRA rank · {what} · " + (f"up to {_n(seeds, 'seed')}" if seeds > 1
                                                                     else "one run per rank"))
    return st.save(fig, out_dir, name, trace, kind="rank", message=message, svg=svg)


# ------------------------------------------------------------------- 6. LoRA vs QLoRA memory

@st.styled
def lora_vs_qlora(inputs: Paths, out_dir: str | Path, *, where: dict | None = None, train_fraction: float | None = None,
                  title: str | None = None, svg: bool = False, name: str = "lora_vs_qlora") -> Figure:
    """LoRA beside QLoRA: the bytes of the frozen backbone weights as stored against test accuracy,
    from LODO runs.csv (frozen_bytes), one panel per held-out dataset's configurations run in both
    modes (+: mean per mode). A sweep's peak RSS is not used: it measures the whole process
    (PyTorch, bitsandbytes, the data), not the weights QLoRA quantises."""
    trace = Trace()
    src = classify(inputs)
    if not src.lodo:
        raise NothingToPlot("LoRA vs QLoRA plots the frozen weights' bytes, which LODO's runs.csv records "
                            f"(frozen_bytes); a sweep's peak RSS measures the whole process. Got {src.describe()}")
    if src.federated:
        trace.note("federated inputs left out: their tables have process RSS, not frozen-weight bytes")
    rows = load_lodo(src.lodo, trace, ("frozen_bytes",), purpose="the LoRA-vs-QLoRA figure",
                     train_fraction=train_fraction).copy()
    for key, value in (where or {}).items():
        if key not in rows.columns:
            raise FedharError(f"--where {key}={value}: no column {key!r} in {src.describe()}")
        rows = rows[rows[key].map(fmt) == value]
    rows["x"] = rows["frozen_bytes"] / 1e6
    keys = [k for k in ("held_out", "backbone_kind", "rank", "train_fraction") if k in rows.columns]
    mode = rows["mode"].map(fmt)
    if (mode == "full").any():
        trace.note("full fine-tuning rows left out (no frozen, quantised weights)")
    rows = rows[mode.isin(["lora", "qlora"]) & rows["x"].notna() & rows["accuracy"].notna()]
    rows = _matched(rows, keys, "LODO", trace)
    if rows["mode"].nunique() < 2:
        raise NothingToPlot(f"LoRA vs QLoRA needs runs of both modes (lora and qlora); {src.describe()} have "
                            "no such pair")
    tags = list(varying(rows, keys))
    rows["tag"] = [label(row, tags) if tags else "" for _, row in rows.iterrows()]

    fig, (ax,) = st.new_figure(width=5.8, height=4.6)
    for mode, m in (("lora", "o"), ("qlora", "s")):
        g = rows[rows["mode"] == mode]
        ax.scatter(g["x"], g["accuracy"], color=st.MODE_COLOURS[mode], marker=m, s=40, alpha=0.85,
                   label=f"{'QLoRA (4-bit NF4 backbone)' if mode == 'qlora' else 'LoRA (fp32 backbone)'}, "
                         f"n={len(g)}")
        ax.scatter([g["x"].mean()], [g["accuracy"].mean()], color=st.MODE_COLOURS[mode], marker="+", s=260,
                   linewidths=2.2, zorder=4)
    ax.margins(x=0.12, y=0.08)
    tagged = rows[rows["tag"] != ""]
    st.label_points(ax, tagged["x"], tagged["accuracy"], tagged["tag"], fontsize=7)
    ax.set_xlabel(f"frozen backbone weights as stored (MB; {MB_NOTE})")
    ax.set_ylabel("test accuracy (%)")
    st.honest_score_axis(ax, rows["accuracy"])
    st.percent_axis(ax.yaxis)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, frameon=False)
    seeds = int(rows.groupby("mode").size().min())
    same = ", ".join(f"{k} {fmt(rows[k].iloc[0])}" for k in keys
                     if k not in (*tags, "held_out") and rows[k].nunique() == 1)
    st.caption(ax, f"centralised LODO ({_data(rows, 'held_out')} held out{'; ' + same if same else ''}): test "
               "accuracy against the bytes of the frozen weights; +: mean per mode", width=62)
    message = "QLoRA " + _memory_message(rows, keys)
    device = (f" · {fmt(rows['device'].iloc[0])}" if "device" in rows and rows["device"].nunique() == 1 else "")
    st.title(fig, title or f"LoRA vs QLoRA: frozen-weight memory and accuracy · {_n(seeds, 'seed')} per mode"
             + device)
    return st.save(fig, out_dir, name, trace, kind="memory", message=message, svg=svg)


def _matched(rows: pd.DataFrame, keys: list[str], what: str, trace: Trace) -> pd.DataFrame:
    """Only the configurations run in both modes: LoRA at ranks QLoRA never ran would compare unlike with unlike."""
    keys = [k for k in keys if rows[k].notna().all()]
    if not keys:
        return rows
    config = rows[keys].astype(str).agg(" / ".join, axis=1)
    both = {c for c, g in rows.groupby(config)["mode"] if g.nunique() == 2}
    if not both:
        return rows
    left = sorted(set(config) - both)
    if left:
        trace.note(f"{what}: left out configurations run in one mode only ({', '.join(left)})")
    return rows[config.isin(both)]


def _memory_message(rows: pd.DataFrame, keys: list[str]) -> str:
    """'needs 85% less memory for the frozen weights than LoRA (8.98 → 1.31 MB) at -0.6 pp accuracy',
    over matched pairs."""
    keys = [k for k in keys if rows[k].notna().all()]
    means = rows.groupby([*keys, "mode"])[["x", "accuracy"]].mean().unstack("mode") if keys else None
    if means is not None:
        means = means.dropna()
    if means is None or means.empty:  # no configuration ran in both modes: compare the mode means
        overall = rows.groupby("mode")[["x", "accuracy"]].mean()
        lx, qx = overall.loc["lora", "x"], overall.loc["qlora", "x"]
        la, qa = overall.loc["lora", "accuracy"], overall.loc["qlora", "accuracy"]
    else:
        lx, qx = means[("x", "lora")].mean(), means[("x", "qlora")].mean()
        la, qa = means[("accuracy", "lora")].mean(), means[("accuracy", "qlora")].mean()
    change = (qx - lx) / lx * 100 if lx else float("nan")
    size = f"{abs(change):.0f}% {'less' if change < 0 else 'more'}"
    return (f"needs {size} memory for the frozen weights than LoRA ({lx:.3g} → {qx:.3g} MB) at "
            f"{(qa - la) * 100:+.1f} pp accuracy")


# --------------------------------------------------------------------------------- all

FIGURES = {
    "drift": drift_vs_round,
    "inexactness": inexactness_scaling,
    "clients": accuracy_per_client,
    "pareto": accuracy_vs_bytes,
    "rank": rank_ablation,
    "memory": lora_vs_qlora,
}


def plot_all(inputs: Paths, out_dir: str | Path, *, svg: bool = False, where: dict | None = None) -> dict:
    """Every figure the inputs allow: kind -> Figure, or the FedharError that kept it from being drawn
    (NothingToPlot when the inputs simply do not hold what it needs)."""
    src = classify(inputs)
    results = {}
    for kind, func in FIGURES.items():
        try:
            if kind == "clients":
                if len(src.runs) != 1 or src.sweeps:
                    raise NothingToPlot("accuracy per client needs exactly one run folder (a sweep's trial: "
                                        "pass SWEEP/trials/TRIAL_ID)")
                results[kind] = func(src.runs[0], out_dir, svg=svg)
            else:
                results[kind] = func(inputs, out_dir, svg=svg, where=where)
        except FedharError as e:
            results[kind] = e
    return results
