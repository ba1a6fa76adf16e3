"""`fedhar plot`: figures from result tables alone (no training).

    fedhar plot KIND INPUT... --out-dir DIR [--svg]
    fedhar plot all SWEEP_DIR_OR_RUN_DIR... --out-dir DIR

matplotlib is imported only when a figure is drawn, so `fedhar --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedhar.errors import FedharError

INPUTS = ("a sweep folder (results.csv) or its results.csv, run folders (rounds.csv, clients.csv, drift.csv, "
          "inexactness.csv, config.json), or LODO runs.csv tables / folders holding them")

KINDS = {
    "drift": ("client drift vs round, a line per strategy", "SWEEP_OR_RUN",
              "Mean relative drift (or 1 - cosine) of the clients' BA updates over clients and LoRA layers, per "
              "round; from a sweep's drift_mean column, else each trial's drift.csv. Lines per strategy (--by), "
              "shaded min-max over the trials (seeds) they average."),
    "inexactness": ("each rule's aggregation error vs local epochs and vs clients per round", "SWEEP",
                    "Each trial's rule's own aggregation error, mean over rounds and layers: 0 for the exact rules "
                    "(FFA, FedEx, FLoRA), else the logged inexactness (inexactness_mean, else "
                    "trials/<id>/inexactness.csv); against local epochs and against the clients aggregated per round; "
                    "each panel holds the other factor at its most common value."),
    "clients": ("one run: accuracy per round for every client (+ server, held out)", "RUN_DIR",
                "Each client's test accuracy per round from clients.csv (phase evaluate), the example-weighted "
                "mean, and the server and held-out curves (thicker) when the run has them."),
    "pareto": ("final accuracy vs communicated MB, Pareto front", "SWEEP_OR_RUN",
               "One point per configuration (mean over seeds): the global model's server-side accuracy after the "
               "last round (the clients' accuracy where there is none, personalised rules marked) against the "
               "cumulative bytes_up + bytes_down in MB; the Pareto front ringed."),
    "rank": ("accuracy and macro-F1 vs LoRA rank (sweep and/or LODO)", "SWEEP_OR_LODO",
             "Final accuracy and macro-F1 against LoRA rank: federated lines from a sweep, centralised ones from "
             "LODO runs.csv (one training share: 0.7 unless --train-fraction), full fine-tuning as a dotted level."),
    "memory": ("LoRA vs QLoRA: frozen-weight bytes against accuracy (LODO)", "LODO",
               "LoRA beside QLoRA: LODO's frozen-weight bytes as stored against held-out accuracy, the "
               "configurations run in both modes (--where backbone_kind=other picks one backbone)."),
}
FUNCTIONS = {"drift": "drift_vs_round", "inexactness": "inexactness_scaling", "clients": "accuracy_per_client",
             "pareto": "accuracy_vs_bytes", "rank": "rank_ablation", "memory": "lora_vs_qlora"}

NAMES = {"drift": "drift_vs_round", "inexactness": "inexactness", "clients": "accuracy_per_client",
         "pareto": "accuracy_vs_bytes", "rank": "rank_ablation", "memory": "lora_vs_qlora"}


def _where(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a setting column and its value), got {text!r}")
    return key.strip(), value.strip()


def _columns(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    if not columns:
        raise argparse.ArgumentTypeError("expected one or more column names, comma-separated")
    return columns


def register(commands) -> None:
    plot = commands.add_parser(
        "plot", help="figures from result tables alone (no training)",
        description="Draw figures from fedhar's result tables alone: PNG at dpi 150 (plus SVG with --svg) and "
        "a sidecar NAME.json listing every input file with its sha256.\n\nINPUT is " + INPUTS + ".\n\n"
        "  fedhar plot all runs/sweeps/NAME --out-dir figures        every figure a sweep allows\n"
        "  fedhar plot clients runs/RUN --out-dir figures            one run's per-client accuracy\n"
        "  fedhar plot rank results/lodo/uci-har --out-dir figures   rank ablation of the LODO runs\n"
        "  fedhar plot KIND --help                               inputs and options of one figure",
)
    kinds = plot.add_subparsers(dest="kind", metavar="KIND")
    plot.set_defaults(run=lambda args: _usage(plot))
    for kind, (summary, metavar, description) in KINDS.items():
        p = kinds.add_parser(kind, help=summary, description=description)
        p.add_argument("inputs", nargs="+", type=Path, metavar=metavar, help=INPUTS)
        _common(p, where=kind != "clients")
        p.add_argument("--title", help="replace the computed one-line message of the figure")
        p.add_argument("--name", help=f"file name without suffix (default {NAMES[kind]})")
        if kind in ("drift",):
            p.add_argument("--metric", choices=("rel_drift", "cosine"), default="rel_drift",
                           help="rel_drift, or 1 - cosine (needs each trial's drift.csv)")
            p.add_argument("--part", choices=("BA", "A", "B"), default="BA",
                           help="the update whose drift to show: BA (B A / r), or the raw factor A or B "
                                "(FFA, which never sends A, has B rows only)")
        if kind == "clients":
            p.add_argument("--metric", choices=("accuracy", "macro_f1"), default="accuracy",
                           help="the score on the y axis")
        if kind == "pareto":
            p.add_argument("--metric", choices=(
                "accuracy", "macro_f1", "server_accuracy", "server_macro_f1", "heldout_accuracy", "heldout_macro_f1"),
                help="the score on the y axis (default: server_accuracy, the global model on the server's test "
                "subjects; accuracy where a run has none); accuracy, macro_f1: the clients' own test windows")
        if kind in ("drift", "inexactness"):
            p.add_argument("--by", type=_columns, default=("strategy",),
                           help="setting column(s) that make one line each, comma-separated")
        if kind in ("rank", "memory"):
            p.add_argument("--train-fraction", type=float,
                           help="LODO rows of this training share (default 0.7 when several)")
        p.set_defaults(run=cmd_plot, kind=kind)
    p = kinds.add_parser("all", help="every figure the inputs allow",
                         description="Every figure the inputs allow; figures they cannot make are listed with why.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="SWEEP_DIR_OR_RUN_DIR", help=INPUTS)
    _common(p)
    p.set_defaults(run=cmd_all, kind="all")


def _common(p, where: bool = True) -> None:
    p.add_argument("--out-dir", type=Path, required=True, help="folder for NAME.png, NAME.svg, NAME.json")
    p.add_argument("--svg", action="store_true", help="also write the figure as SVG")
    if where:
        p.add_argument("--where", type=_where, action="append", default=[], metavar="KEY=VALUE",
                       help="keep only trials with this setting (repeatable), e.g. --where rank=16")


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def cmd_plot(args) -> int:
    from simulations import plots

    func = getattr(plots, FUNCTIONS[args.kind])
    options = {"svg": args.svg, "title": args.title}
    if args.name:
        options["name"] = args.name
    for key in ("metric", "part", "by", "train_fraction"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    if getattr(args, "where", None):
        options["where"] = dict(args.where)
    if args.kind == "clients":
        if len(args.inputs) != 1:
            raise FedharError(f"plot clients takes one run folder, got {len(args.inputs)}")
        fig = func(args.inputs[0], args.out_dir, **options)
    else:
        fig = func(args.inputs, args.out_dir, **options)
    _report(fig)
    return 0


def cmd_all(args) -> int:
    from simulations.plots import NothingToPlot, plot_all

    results = plot_all(args.inputs, args.out_dir, svg=args.svg, where=dict(args.where) or None)
    made = [fig for fig in results.values() if not isinstance(fig, Exception)]
    errors = 0
    for kind, result in results.items():
        if isinstance(result, NothingToPlot):
            print(f"skipped {kind}: {result}", file=sys.stderr)
        elif isinstance(result, FedharError):
            print(f"fedhar: error: {kind}: {result}", file=sys.stderr)
            errors += 1
        else:
            _report(result)
    if not made and not errors:
        raise FedharError(f"no figure could be drawn from {', '.join(map(str, args.inputs))}")
    return 2 if errors else 0


def _report(fig) -> None:
    info = fig.fedhar
    print(f"{info['paths'][0]}: {info['message']}")
    for path in info["paths"][1:]:
        print(f"  {path}")
    for note in info["notes"]:
        print(f"  note: {note}", file=sys.stderr)
