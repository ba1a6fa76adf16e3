"""Federated runs beside the centralised LODO baseline, on the same test subjects.

    python -m simulations.fl_report results/fl [--lodo results/lodo]   # writes results/fl/comparison.md

Reads every run directory under ``results/fl/runs/`` (config.json, rounds.csv, clients.csv,
as ``fedhar fl`` writes them). A run made with ``--server-test-fraction 0.3`` keeps, per
dataset, exactly the test subjects of the centralised LODO run with the same seed; its
``server:<dataset>`` rows are the global model on them, so the federated and centralised
numbers below are measured on the same windows. The centralised row is the LODO run of that
dataset with the same mode, rank (LoRA/QLoRA) and seed at 70% training subjects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from fedhar.errors import FedharError
from simulations.config import WHERE_FIELDS, FLConfig


def command_of(config: dict) -> str:
    """The ``fedhar fl`` command that reproduces a run (options that differ from the defaults)."""
    defaults = FLConfig().settings()
    where = {name.replace("_", "-") for name in WHERE_FIELDS}
    options = []
    for key, value in config.items():
        if key in where or defaults.get(key) == value:
            continue
        if isinstance(value, bool):
            options.append(f"--{key}" if value else f"--no-{key}")
        else:
            options.append(f"--{key} {value}")
    return "fedhar fl " + " ".join(options)


def load_run(run_dir: Path) -> dict:
    """One finished federated run, summarised: its configuration, final-round metrics, bytes."""
    for name in ("config.json", "rounds.csv", "clients.csv"):
        if not (run_dir / name).exists():
            raise FedharError(f"{run_dir / name}: missing (did the run finish? re-run its command to resume)")
    meta = json.loads((run_dir / "config.json").read_text())
    cfg = meta["config"]
    rounds = pd.read_csv(run_dir / "rounds.csv")
    clients = pd.read_csv(run_dir / "clients.csv")
    last = int(rounds["round"].max())
    server = clients[(clients["phase"] == "server") & (clients["round"] == last) & (clients["status"] == "ok")]
    train = clients[clients["phase"] == "train"]
    bytes_per_round = (rounds["bytes_up"] + rounds["bytes_down"])
    row = {
        "run": run_dir.name,
        "data": cfg["data"],
        "partition": cfg["partition"],
        "clients": len(meta["clients"]),
        "strategy": cfg["strategy"],
        "mode": cfg["mode"],
        "rank": cfg["rank"] if cfg["mode"] != "full" else 0,
        "seed": cfg["seed"],
        "rounds": last,
        "rounds_planned": cfg["rounds"],
        "local_epochs": cfg["local-epochs"],
        "client_accuracy": rounds["accuracy"].iloc[-1],  # each client's own test windows, weighted
        "failed": int(train["status"].isin(["failed", "timeout", "rejected"]).sum()),
        "mb_per_round": bytes_per_round.mean() / 2**20,
        "mb_total": bytes_per_round.sum() / 2**20,
        "command": command_of(cfg),
    }
    for dataset_row in server.itertuples():
        row.setdefault("per_dataset", {})[dataset_row.client.removeprefix("server:")] = {
            "accuracy": dataset_row.accuracy, "macro_f1": dataset_row.macro_f1}
    return row


def load_runs(fl_dir: Path) -> tuple[list[dict], list[str]]:
    """Finished runs (rounds.csv written at the end of a run), and the names of unfinished ones."""
    run_dirs = sorted(p.parent for p in (fl_dir / "runs").glob("*/config.json"))
    if not run_dirs:
        raise FedharError(f"{fl_dir / 'runs'}: no run directories (each needs config.json)")
    unfinished = [d.name for d in run_dirs if not (d / "rounds.csv").exists()]
    return [load_run(d) for d in run_dirs if d.name not in unfinished], unfinished


def load_lodo(lodo_dir: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(lodo_dir.glob("*/runs.csv"))]
    if not frames:
        return pd.DataFrame(columns=["held_out", "mode", "rank", "seed", "train_fraction", "accuracy", "macro_f1"])
    rows = pd.concat(frames, ignore_index=True)
    return rows[(rows["train_fraction"] == 0.7) & (rows["split"] == "random")]


def centralised(lodo: pd.DataFrame, dataset: str, mode: str, rank: int, seed: int) -> pd.Series | None:
    match = lodo[(lodo["held_out"] == dataset) & (lodo["mode"] == mode) & (lodo["seed"] == seed)
                 & (lodo["rank"] == (0 if mode == "full" else rank))]
    return None if match.empty else match.iloc[-1]


def comparison_table(runs: list[dict], lodo: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, dataset): federated on the server's test subjects beside centralised."""
    out = []
    for run in runs:
        for dataset, fed in run.get("per_dataset", {}).items():
            central = centralised(lodo, dataset, run["mode"], run["rank"], run["seed"])
            row = {k: run[k] for k in ("data", "partition", "clients", "strategy", "mode", "rank", "seed",
                                       "rounds", "local_epochs")}
            row.update(dataset=dataset, fl_accuracy=fed["accuracy"], fl_macro_f1=fed["macro_f1"],
                       central_accuracy=central["accuracy"] if central is not None else float("nan"),
                       central_macro_f1=central["macro_f1"] if central is not None else float("nan"),
                       client_accuracy=run["client_accuracy"],
                       mb_per_round=run["mb_per_round"], mb_total=run["mb_total"], failed=run["failed"],
                       run=run["run"])
            row["gap_points"] = 100 * (row["fl_accuracy"] - row["central_accuracy"])
            out.append(row)
    return pd.DataFrame(out)


def _fmt(v, digits=3):
    return "–" if pd.isna(v) else f"{v:.{digits}f}"


def markdown(runs: list[dict], table: pd.DataFrame, fl_dir: Path, unfinished: list[str] = ()) -> str:
    lines = ["# Federated vs centralised, on the same test subjects", "",
             f"Generated by `python -m simulations.fl_report {fl_dir}` from the run directories in "
             f"`{fl_dir}/runs/` and the centralised LODO tables in `results/lodo/`.", "",
             "*fl* = the global model (global adapters + shared head) after the last round, on the test "
             "subjects the server holds (`--server-test-fraction 0.3`: the very subjects of the LODO run "
             "with the same seed). *central* = the LODO run (same backbone, mode, rank, seed; 70% of "
             "subjects train). *gap* = fl − central accuracy in percentage points. Communication = "
             "adapter (+ head) bytes up and down, all clients, per round and in total (FedEx-LoRA and "
             "FLoRA also send each client a dense base update per adapted layer). *clients acc* = "
             "the clients' own test windows, example-weighted, with the model each client evaluates "
             "(for FedSA-LoRA: the shared A with the client's own B: personalised).", ""]
    header = ("| dataset | clients | strategy | mode | rank | rounds × local epochs | fl acc | fl F1 | "
              "central acc | central F1 | gap (pts) | clients acc | MB/round | MB total | failed |")
    for (data, partition), group in table.groupby(["data", "partition"], sort=False):
        lines += [f"## {data}, one client per {partition}", "", header, "|" + "---|" * 15]
        for r in group.sort_values(["dataset", "mode", "strategy"]).itertuples():
            lines.append(f"| {r.dataset} | {r.clients} | {r.strategy} | {r.mode} | {r.rank or '–'} | "
                         f"{r.rounds} × {r.local_epochs} | {_fmt(r.fl_accuracy)} | {_fmt(r.fl_macro_f1)} | "
                         f"{_fmt(r.central_accuracy)} | {_fmt(r.central_macro_f1)} | {_fmt(r.gap_points, 1)} | "
                         f"{_fmt(r.client_accuracy)} | "
                         f"{_fmt(r.mb_per_round, 2)} | {_fmt(r.mb_total, 1)} | {r.failed} |")
        lines.append("")
    short = [f"{r['run']} ({r['rounds']}/{r['rounds_planned']} rounds)" for r in runs
             if r["rounds"] < r["rounds_planned"]] + list(unfinished)
    if short:
        lines += ["Unfinished runs, not in the tables (re-run `bash results/fl/run_all.sh` to resume them): "
                  + ", ".join(short), ""]
    lines += ["## Commands", "", "Each run directory was made by (plus `--engine inline --out-dir results/fl/runs/<run>`; "
              "the engine does not change the numbers, tests/test_fl_inline.py):", ""]
    lines += [f"- `{r['run']}`: `{r['command']}`" for r in runs]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fl_dir", type=Path, help="results/fl (holds runs/)")
    parser.add_argument("--lodo", type=Path, default=Path("results/lodo"), help="the LODO results folder")
    args = parser.parse_args(argv)
    runs, unfinished = load_runs(args.fl_dir)
    table = comparison_table(runs, load_lodo(args.lodo))
    table.to_csv(args.fl_dir / "comparison.csv", index=False)
    (args.fl_dir / "comparison.md").write_text(markdown(runs, table, args.fl_dir, unfinished))
    print(f"wrote {args.fl_dir / 'comparison.md'} and comparison.csv ({len(table)} rows from {len(runs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
