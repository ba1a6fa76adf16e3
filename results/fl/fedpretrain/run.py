"""Issue 22: which backbone, with how few labels? Federated MAE pretraining against its controls.

Backbones (per seed):
  random     the MAE at its initialisation with the seed, never trained (the control); it is
             also where the federated pretraining starts
  central    pretrained on the pooled training windows of the same clients (``fedhar fl --task
             pretrain --arm centralised``: one client holding their union, same rounds, epochs and
             optimiser): what pooling raw data buys
  federated  pretrained federatedly on the same clients' unlabelled training windows (``fedhar fl
             --task pretrain``, FedAvg unless --pretrain-strategy)
  other      pretrained centrally on other datasets (--other-data; ``fedhar.pretrain``), today's `other`
Fine-tuning per (backbone, label fraction, seed): federated LoRA (``fedhar fl --label-fraction F``,
FedAvg unless --strategy) and the probe (the head alone on the frozen backbone, trained on the union
of the same labelled windows: ``fedhar.finetune``, mode probe). Both are scored on the server's test
subjects (--server-test-fraction 0.3 of the subjects, the LODO split of the seed), which no
pretraining and no fine-tuning ever sees. Clients: one per subject of --data.

Resumable: every finished cell is one row appended to results.csv (a rerun skips rows already
there), every pretraining one row of pretrain.csv; federated runs live in WORK_DIR/<name>/ and
continue from their round checkpoint. The small tables of each pretraining run (rounds.csv,
config.json, backbone.json) are copied to pretrain/<name>/ here; the backbones (12 MB each) stay
in WORK_DIR. table.md is rewritten from results.csv at the end (paired differences over seeds).

  python results/fl/fedpretrain/run.py --data uci-har --data-dir /work/shared/data \\
      --backbones random,federated --label-fractions 0.1 --seeds 0 --pretrain-rounds 5 --finetune-rounds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # this checkout's fedhar and simulations, not another installed copy
BACKBONES = ("random", "central", "federated", "other")
KEY = ("data", "backbone", "label_fraction", "mode", "seed", "pretrain_rounds", "finetune_rounds")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="uci-har")
    p.add_argument("--data-dir", default="")
    p.add_argument("--other-data", default="usc-had", help="datasets of the 'other' backbone, comma-separated")
    p.add_argument("--backbones", default="random,central,federated,other")
    p.add_argument("--label-fractions", default="0.01,0.05,0.1,0.3,1")
    p.add_argument("--modes", default="lora,probe")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--pretrain-rounds", type=int, default=20)
    p.add_argument("--pretrain-epochs", type=int, default=1, help="local epochs per pretraining round")
    p.add_argument("--central-rounds", type=int, default=0,
                   help="rounds of the central backbone (one client holding the union; 0 = --pretrain-rounds); with "
                        "--fraction-train f < 1 a federated round passes over about f of the windows, so "
                        "f x --pretrain-rounds matches the data passes")
    p.add_argument("--pretrain-strategy", default="fedavg")
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--other-epochs", type=int, default=20, help="epochs of the 'other' backbone's central pretraining")
    p.add_argument("--finetune-rounds", type=int, default=10)
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--probe-epochs", type=int, default=20)
    p.add_argument("--partition", default="subject", choices=("subject", "dirichlet"),
                   help="clients: one per subject, or --num-clients with Dirichlet label skew")
    p.add_argument("--num-clients", type=int, default=100, help="clients of a Dirichlet partition")
    p.add_argument("--dirichlet-alpha", type=float, default=0.5)
    p.add_argument("--fraction-train", type=float, default=1.0,
                   help="share of the clients sampled each round, in pretraining and fine-tuning")
    p.add_argument("--server-eval-every", type=int, default=1, help="rounds between server evaluations of LoRA runs")
    p.add_argument("--work-dir", default="runs/fedpretrain", help="federated runs and backbones (not committed)")
    p.add_argument("--out", default=str(HERE), help="results.csv, pretrain.csv, table.md")
    p.add_argument("--report-only", action="store_true", help="rewrite table.md and the figures from --out's results.csv; run nothing")
    args = p.parse_args(argv)
    args.backbones = [b for b in args.backbones.split(",") if b]
    unknown = set(args.backbones) - set(BACKBONES)
    if unknown:
        p.error(f"--backbones: unknown {sorted(unknown)}; known: {', '.join(BACKBONES)}")
    args.label_fractions = _numbers(p, "--label-fractions", args.label_fractions, float)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.modes) - {"lora", "probe"}
    if unknown:
        p.error(f"--modes: unknown {sorted(unknown)}; known: lora, probe")
    args.seeds = _numbers(p, "--seeds", args.seeds, int)
    return args


def _numbers(p: argparse.ArgumentParser, option: str, text: str, kind: type) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        p.error(f"{option}: expected comma-separated {kind.__name__} values, got {text!r}")


def base(args, seed: int) -> dict:
    """What every federation of the study shares: the same clients and the same server test subjects."""
    dirichlet = dict(num_clients=args.num_clients, dirichlet_alpha=args.dirichlet_alpha) if args.partition == "dirichlet" else {}
    return dict(data=args.data, data_dir=args.data_dir, partition=args.partition, **dirichlet,
                fraction_train=args.fraction_train, server_test_fraction=0.3, seed=seed, batch_size=64, head="shared")


def run_federation(cfg) -> tuple[Path, float]:
    """(out dir, seconds) of a finished run of ``cfg``: run now, resumed from its checkpoint, or found done."""
    from simulations.run import run_inprocess

    out = Path(cfg.out_dir)
    if (out / "config.json").exists():
        same_run(out, cfg)
    if (out / "done").exists():
        return out, json.loads((out / "done").read_text())["seconds"]
    resume = (out / "checkpoint.pkl").exists()
    t0 = time.perf_counter()
    run_inprocess(replace(cfg, resume=resume, overwrite=out.exists() and not resume), engine="inline")
    seconds = time.perf_counter() - t0
    (out / "done").write_text(json.dumps({"seconds": seconds, "resumed": resume}))
    return out, seconds


def same_run(out: Path, cfg) -> None:
    """Refuse to reuse or resume a run folder that holds another configuration (say, a backbone
    pretrained with other local epochs under the same folder name)."""
    from simulations.fl_report import command_of

    found = json.loads((out / "config.json").read_text())["config"]
    asked = cfg.settings()
    if command_of(found) != command_of(asked) or str(found.get("backbone") or "") != str(asked.get("backbone") or ""):
        raise SystemExit(f"run.py: {out} holds `{command_of(found)}`, not the `{command_of(asked)}` asked for: "
                         "give this study its own --work-dir")


def append(path: Path, row: dict) -> None:
    """One row more in ``path``; a column the file lacks widens the file (older rows get it empty)."""
    if path.exists():
        with open(path, newline="") as f:
            header = next(csv.reader(f))
        if set(row) - set(header):
            pd.read_csv(path).reindex(columns=header + [k for k in row if k not in header]).to_csv(path, index=False)
            header += [k for k in row if k not in header]
    else:
        header = list(row)
        with open(path, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writeheader()
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=header, restval="").writerow(row)


def finetune_name(kind: str, data: str, fraction: float, finetune_rounds: int, pretrain_rounds: int, seed: int) -> str:
    return f"ft-{kind}-{data}-f{fraction:g}-r{finetune_rounds}-p{pretrain_rounds}-s{seed}"


def done(path: Path, key: tuple[str, ...]) -> set[tuple]:
    if not path.exists():
        return set()
    return {tuple(str(r[k]) for k in key) for r in pd.read_csv(path).to_dict("records")}


def pretrain_rounds(kind: str, args) -> int:
    """Rounds of pretraining behind a backbone kind (0: random, or `other`'s epochs are its own)."""
    if kind == "central":
        return args.central_rounds or args.pretrain_rounds
    return args.pretrain_rounds if kind == "federated" else 0


def epochs_of(kind: str, args) -> int:
    """Epochs behind a backbone kind: local epochs per round (central, federated), or `other`'s epochs."""
    return {"central": args.pretrain_epochs, "federated": args.pretrain_epochs, "other": args.other_epochs}.get(kind, 0)


def backbone(kind: str, args, seed: int) -> tuple[Path, dict]:
    """(checkpoint, pretraining cost row) of one backbone of one seed; pretrains it if needed."""
    from fedhar.pretrain import PretrainConfig, pretrain, random_init_backbone
    from simulations.config import FLConfig
    from simulations.fl_report import command_of

    work = Path(args.work_dir).resolve()
    if kind == "random":
        return random_init_backbone(PretrainConfig(seed=seed), out_dir=work / "backbones"), {}
    if kind == "other":
        from fedhar.data import WindowSet, load

        windows = WindowSet.concat([load(d, args.data_dir or None).windows for d in args.other_data.split(",")])
        t0 = time.perf_counter()
        path = pretrain(windows, PretrainConfig(epochs=args.other_epochs, seed=seed), out_dir=work / "backbones")
        info = json.loads(path.with_suffix(".json").read_text())
        return path, {"seconds": info.get("seconds", time.perf_counter() - t0), "bytes_up": 0, "bytes_down": 0,
                      "command": f"fedhar pretrain --data {args.other_data} --epochs {args.other_epochs} --seed {seed}"}
    rounds = pretrain_rounds(kind, args)
    name = f"pretrain-{kind}-{args.data}-r{rounds}-s{seed}"
    cfg = FLConfig(**base(args, seed), task="pretrain", arm="centralised" if kind == "central" else "federated",
                   strategy=args.pretrain_strategy, rounds=rounds, local_epochs=args.pretrain_epochs,
                   lr=args.pretrain_lr, client_eval_every=rounds, out_dir=str(work / name))
    out, seconds = run_federation(cfg)
    keep = Path(args.out) / "pretrain" / name
    keep.mkdir(parents=True, exist_ok=True)
    for table in ("rounds.csv", "config.json", "backbone.json"):
        shutil.copyfile(out / table, keep / table)
    rounds = pd.read_csv(out / "rounds.csv")
    return out / "backbone.safetensors", {
        "seconds": seconds, "bytes_up": int(rounds["bytes_up"].sum()), "bytes_down": int(rounds["bytes_down"].sum()),
        "final_train_loss": rounds["train_loss"].iloc[-1], "final_recon_loss": rounds["recon_loss"].iloc[-1],
        "command": command_of(cfg.settings())}


def lora(path: Path, fraction: float, args, seed: int, name: str) -> dict:
    from simulations.config import FLConfig
    from simulations.fl_report import command_of

    cfg = FLConfig(**base(args, seed), backbone=str(path), label_fraction=fraction, strategy=args.strategy,
                   rounds=args.finetune_rounds, client_eval_every=args.finetune_rounds,
                   server_eval_every=args.server_eval_every, out_dir=str(Path(args.work_dir).resolve() / name))
    out, seconds = run_federation(cfg)
    keep = Path(args.out) / "finetune" / name
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "rounds.csv", keep / "rounds.csv")  # the accuracy-vs-MB curve
    rounds = pd.read_csv(out / "rounds.csv")
    last = rounds.iloc[-1]
    few = json.loads((out / "config.json").read_text()).get("few_labels", {})
    return {"accuracy": last["server_accuracy"], "macro_f1": last["server_macro_f1"], "seconds": seconds,
            "converged_round": converged_round(rounds),
            "bytes_up": int(rounds["bytes_up"].sum()), "bytes_down": int(rounds["bytes_down"].sum()),
            "labelled_windows": few.get("labelled_windows", ""), "training_windows": few.get("training_windows", ""),
            "command": f"{command_of(cfg.settings())} --backbone {path}"}


CONVERGED_WITHIN = 0.01


def converged_round(rounds: pd.DataFrame) -> int:
    """The stated convergence criterion: the first evaluated round from which the server's
    accuracy stays within CONVERGED_WITHIN (1 point) of its value at the last round."""
    evaluated = rounds.dropna(subset=["server_accuracy"])
    final = evaluated["server_accuracy"].iloc[-1]
    below = evaluated["server_accuracy"] < final - CONVERGED_WITHIN
    after = evaluated[~below.iloc[::-1].cumsum().iloc[::-1].astype(bool)]  # rounds after the last one below
    return int(after["round"].iloc[0])


def probe(path: Path, fraction: float, args, seed: int) -> dict:
    """The head alone on the frozen backbone, trained on the union of the clients' labelled windows."""
    from fedhar.data.labels import encode_open
    from fedhar.finetune import FinetuneConfig, finetune_checkpoint
    from simulations.config import FLConfig
    from simulations.task import client_data, federation

    cfg = FLConfig(**base(args, seed), backbone=str(path), label_fraction=fraction, arm="centralised")
    fed, data = federation(cfg), client_data(cfg, 0)
    test = fed.norm.apply(fed.server_test)
    test_y, _ = encode_open(data.labels, test.y, data.n_classes)
    t0 = time.perf_counter()
    result = finetune_checkpoint(str(path), data.train_x, data.train_y, test.x, test_y, data.n_classes,
                                 cfg=FinetuneConfig(mode="probe", epochs=args.probe_epochs, seed=seed), threads=1)
    return {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "seconds": time.perf_counter() - t0,
            "bytes_up": 0, "bytes_down": 0, "labelled_windows": len(data.train_y),
            "training_windows": fed.few_labels.get("training_windows", len(data.train_y)),
            "command": f"probe: fedhar.finetune mode probe, {args.probe_epochs} epochs, on the labelled windows of "
                       f"fedhar fl --data {args.data} --partition subject --server-test-fraction 0.3 --seed {seed} "
                       f"--label-fraction {fraction} --arm centralised"}


def main(argv=None) -> int:
    from fedhar.lodo import code_version

    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, pretrains = out / "results.csv", out / "pretrain.csv"
    finished = done(results, KEY)
    pre_done = done(pretrains, ("data", "backbone", "seed", "pretrain_rounds"))
    if args.report_only:
        if not results.exists():
            raise SystemExit(f"run.py: --report-only: no {results}")
        return report(pd.read_csv(results), out, args.data)
    command = "python " + shlex.join([str(Path(sys.argv[0])), *(argv if argv is not None else sys.argv[1:])])
    for seed in args.seeds:
        for kind in args.backbones:
            path, cost = backbone(kind, args, seed)
            if cost and (args.data, kind, str(seed), str(pretrain_rounds(kind, args))) not in pre_done:
                append(pretrains, {"data": args.data, "backbone": kind, "seed": seed,
                                   "pretrain_rounds": pretrain_rounds(kind, args), "pretrain_epochs": epochs_of(kind, args),
                                   **cost, "code": code_version()})
            for fraction in args.label_fractions:
                for mode in args.modes:
                    key = {"data": args.data, "backbone": kind, "label_fraction": fraction, "mode": mode, "seed": seed,
                           "pretrain_rounds": pretrain_rounds(kind, args),
                           "finetune_rounds": args.finetune_rounds if mode == "lora" else 0}
                    if tuple(str(key[k]) for k in KEY) in finished:
                        continue
                    name = finetune_name(kind, args.data, fraction, args.finetune_rounds, key["pretrain_rounds"], seed)
                    cell = lora(path, fraction, args, seed, name) if mode == "lora" else probe(path, fraction, args, seed)
                    row = {**key, **cell, "backbone_file": path.name, "code": code_version(), "device": "cpu", "threads": 1,
                           "study": command,
                           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                    append(results, row)
                    print(f"{kind} backbone, {fraction:.0%} labels, {mode}, seed {seed}: accuracy {row['accuracy']:.3f} "
                          f"({row['seconds']:.0f} s)", flush=True)
    return report(pd.read_csv(results), out, args.data)


def report(rows: pd.DataFrame, out: Path, data: str) -> int:
    (out / "table.md").write_text(table(rows) + convergence(rows, out) + moonshot(rows, out))
    figure(rows, out / "accuracy_vs_labels.png", data)
    if (rows["mode"] == "lora").any():
        curves(rows, out, data)
    return 0


COMPARISONS = (("federated", "random"), ("federated", "central"), ("federated", "other"), ("central", "random"),
               ("other", "random"))


def table(rows: pd.DataFrame) -> str:
    """Accuracy per (mode, label fraction, backbone) over seeds, and the paired differences the
    issue asks for: within one batch (fedhar.pairing: same code, device, threads; the backbone
    varies on purpose), Holm-corrected over every comparison of the table."""
    from fedhar.pairing import cell, pair, refused_section
    from fedhar.stats import holm, mean_std, paired_difference

    if "source" not in rows:
        rows = rows.assign(source=[f"results.csv line {i + 2}" for i in range(len(rows))])
    cells, diffs, pairings, refused = [], [], [], []
    for (mode, fraction), group in rows.groupby(["mode", "label_fraction"], sort=True):
        for a, b in COMPARISONS:
            arm_a, arm_b = group[group["backbone"] == a], group[group["backbone"] == b]
            if arm_a.empty or arm_b.empty:
                continue
            pairing = pair(arm_a, arm_b, "accuracy", exempt=("backbone",),
                           what=f"{mode} {fraction:.0%} labels {a} - {b}")
            cells.append((mode, fraction, a, b))
            diffs.append(paired_difference(pairing.a, pairing.b))
            pairings.append(pairing)
            refused += pairing.refused
    corrected = dict(zip(cells, zip(holm(diffs), pairings)))
    lines = ["| mode | labels | backbone | pretrain rounds | accuracy | macro-F1 |", "|---|---|---|---|---|---|"]
    for (mode, fraction), group in rows.groupby(["mode", "label_fraction"], sort=True):
        for kind in BACKBONES:
            these = group[group["backbone"] == kind]
            if len(these):
                lines.append(f"| {mode} | {fraction:.0%} | {kind} | {int(these['pretrain_rounds'].iloc[0])} | "
                             f"{mean_std(these['accuracy'])} | {mean_std(these['macro_f1'])} |")
    lines += ["", f"Paired differences in accuracy (points; 95% interval; verdict Holm-corrected over the table's "
                  f"{len(diffs)} comparisons; equivalence margin ±1 point; MDD = minimum detectable difference):", "",
              "| mode | labels | comparison | difference |", "|---|---|---|---|"]
    for (mode, fraction, a, b), (diff, pairing) in corrected.items():
        lines.append(f"| {mode} | {fraction:.0%} | {a} − {b} | {cell(diff, pairing)} |")
    batch = sorted({" / ".join(map(str, r)) for r in rows[[c for c in ("code", "device", "threads") if c in rows]]
                    .itertuples(index=False)})
    lines += ["", f"Rows: {len(rows)}; code / device / threads: {'; '.join(batch)}.", ""]
    return "\n".join(lines + refused_section(refused))


def lora_rounds(rows: pd.DataFrame, out: Path):
    """(row, rounds.csv) of every federated LoRA row, from out/finetune/<run>/rounds.csv."""
    for r in rows[rows["mode"] == "lora"].itertuples():
        name = finetune_name(r.backbone, r.data, r.label_fraction, int(r.finetune_rounds), int(r.pretrain_rounds), int(r.seed))
        path = out / "finetune" / name / "rounds.csv"
        if not path.exists():
            raise SystemExit(f"run.py: {path} is missing (results.csv has its row): copy the run's rounds.csv there "
                             f"from WORK_DIR/{name}/")
        yield r, pd.read_csv(path)


def convergence(rows: pd.DataFrame, out: Path) -> str:
    """Rounds to convergence of the federated LoRA runs by the stated criterion (converged_round)."""
    found = [(r.label_fraction, r.backbone, r.seed, converged_round(t), int(t["round"].iloc[-1])) for r, t in lora_rounds(rows, out)]
    if not found:
        return ""
    lines = ["## Rounds to convergence (federated LoRA)", "",
             f"The first evaluated round from which the server's accuracy stays within {CONVERGED_WITHIN * 100:g} point of "
             "its last-round value (`converged_round`); a run whose value is its last round has not been shown to "
             "converge.", "", "| labels | backbone | converged round per seed | last round |", "|---|---|---|---|"]
    table_ = pd.DataFrame(found, columns=["fraction", "backbone", "seed", "converged", "last"])
    for (fraction, kind), g in table_.groupby(["fraction", "backbone"], sort=True):
        g = g.sort_values("seed")
        lines.append(f"| {fraction:.0%} | {kind} | {', '.join(f's{s}: {c}' for s, c in zip(g['seed'], g['converged']))} | "
                     f"{int(g['last'].max())} |")
    return "\n".join(lines + ["", ""])


def moonshot(rows: pd.DataFrame, out: Path) -> str:
    """The issue's moonshot: federated LoRA on the federated backbone with 10% labels against
    centralised full fine-tuning with 100% labels (``fedhar fl --arm centralised --mode full``,
    from the same federated backbone; run folders' rounds.csv + config.json copied to
    out/moonshot/s<seed>/), paired by seed within one batch; "within 1 point" is the TOST
    verdict at the ±1 point margin."""
    from fedhar.pairing import cell, pair, refused_section, run_batch
    from fedhar.stats import mean_std, paired_difference

    runs = sorted((out / "moonshot").glob("s*/config.json"))
    ours = rows[(rows["mode"] == "lora") & (rows["backbone"] == "federated") & (rows["label_fraction"] == 0.1)]
    if not runs or ours.empty:
        return ""
    full = []
    for path in runs:
        meta = json.loads(path.read_text())
        last = pd.read_csv(path.parent / "rounds.csv").iloc[-1]
        full.append({**run_batch(path.parent.relative_to(out), meta), "device": "cpu", "backbone": "federated",
                     "seed": meta["config"]["seed"], "accuracy": last["server_accuracy"]})
    full_rows = pd.DataFrame(full).drop(columns="epochs")
    ours = ours.assign(source=[f"results.csv line {i + 2}" for i in ours.index])
    pairing = pair(ours, full_rows, "accuracy", what="moonshot")
    diff = paired_difference(pairing.a, pairing.b)
    return "\n".join([
        "## Moonshot", "",
        "Federated LoRA on the federatedly pretrained backbone with 10% labels against centralised full "
        "fine-tuning with 100% labels from the same backbone (10 epochs, same optimiser; `moonshot/`): the issue "
        "asks for a gap within 1 point (TOST at ±1).", "",
        "| arm | accuracy |", "|---|---|",
        f"| federated LoRA, federated backbone, 10% labels | {mean_std(pairing.a)} |",
        f"| centralised full fine-tuning, federated backbone, 100% labels | {mean_std(pairing.b)} |",
        f"| difference | {cell(diff, pairing)} |", "", *refused_section(pairing.refused)]) + "\n"


STYLES = dict(zip(BACKBONES, [("tab:gray", "o"), ("tab:blue", "s"), ("tab:orange", "D"), ("tab:green", "^")]))


def _panels(n: int):
    """(pyplot, figure, a row of n panels sharing the accuracy axis), drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False, sharey=True)
    return plt, fig, axes[0]


def _counts(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def figure(rows: pd.DataFrame, path: Path, data: str) -> None:
    """Accuracy against the label fraction, one series per backbone, one panel per fine-tuning mode."""
    import matplotlib.ticker

    modes = sorted(rows["mode"].unique())
    plt, fig, axes = _panels(len(modes))
    for ax, mode in zip(axes, modes):
        for kind in BACKBONES:
            these = rows[(rows["mode"] == mode) & (rows["backbone"] == kind)]
            if these.empty:
                continue
            stats_ = these.groupby("label_fraction")["accuracy"].agg(["mean", "std", "count"]).sort_index()
            colour, marker = STYLES[kind]
            ax.errorbar(stats_.index * 100, stats_["mean"], yerr=stats_["std"].fillna(0), color=colour, marker=marker,
                        capsize=3, label=f"{kind} (n={_counts(stats_['count'])} seeds)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlabel("labelled share of each client's training windows (%)")
        ax.set_title({"lora": "federated LoRA (FedAvg)", "probe": "probe (head only, pooled labelled windows)"}.get(mode, mode),
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("accuracy on the server's test subjects (mean ± std)")
    clients = "Dirichlet clients" if rows["command"].str.contains("--partition dirichlet").any() else "subject clients"
    fig.suptitle(f"real {data}: backbone vs label fraction ({clients}; frozen backbone)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def curves(rows: pd.DataFrame, out: Path, data: str) -> None:
    """Federated LoRA: the server's accuracy against the MB fine-tuning has communicated (up + down),
    mean over seeds per backbone, one panel per label fraction; the federated backbone's pretraining
    traffic is stated in its legend (the central backbone's cost is raw data pooled, not bytes)."""
    lora_rows = rows[rows["mode"] == "lora"]
    curve = {(r.label_fraction, r.backbone, r.seed): t for r, t in lora_rounds(rows, out)}
    pretrains = pd.read_csv(out / "pretrain.csv") if (out / "pretrain.csv").exists() else pd.DataFrame()
    fractions = sorted(lora_rows["label_fraction"].unique())
    plt, fig, axes = _panels(len(fractions))
    for ax, fraction in zip(axes, fractions):
        for kind in BACKBONES:
            these = lora_rows[(lora_rows["label_fraction"] == fraction) & (lora_rows["backbone"] == kind)]
            if these.empty:
                continue
            runs = []
            for r in these.itertuples():
                table_ = curve[(fraction, kind, r.seed)].copy()
                table_["mb"] = (table_["bytes_up"] + table_["bytes_down"]).cumsum() / 1e6
                runs.append(table_.dropna(subset=["server_accuracy"])[["round", "mb", "server_accuracy"]])
            mean = pd.concat(runs).groupby("round").mean()
            label = f"{kind} backbone (n={len(runs)} seeds)"
            if kind == "federated" and not pretrains.empty:
                pre = pretrains[pretrains["backbone"] == "federated"]
                label += f"\n+{(pre['bytes_up'] + pre['bytes_down']).mean() / 1e9:.1f} GB in pretraining (up + down)"
            colour, marker = STYLES[kind]
            ax.plot(mean["mb"], mean["server_accuracy"], color=colour, marker=marker, markersize=4, label=label)
        ax.set_xlabel("MB communicated in fine-tuning (up + down, cumulative)")
        ax.set_title(f"federated LoRA, {fraction:.0%} labels", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")  # the curves start bottom left and end top right
    axes[0].set_ylabel("server test accuracy (mean over seeds)")
    fig.suptitle(f"real {data}\naccuracy on the server's test subjects vs MB communicated", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_mb.png", dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    from fedhar.errors import FedharError

    try:
        sys.exit(main())
    except FedharError as e:  # a setting FLConfig refuses (--fraction-train 1.5, --label-fractions 0): one line
        print(f"run.py: {e}", file=sys.stderr)
        sys.exit(2)
