"""Our LODO numbers beside the reference paper's (arXiv 2512.17983, Tables II, VI, VII).

    python -m fedhar.lodo_report results/lodo      # writes results/lodo/comparison.md

Reads every ``runs.csv`` under the folder (at any depth), except inside a sub-folder with its own
``comparison.md`` (another study, reported by running this on that folder; named in the output). Sections: pretraining tested (each backbone
against the random-init control, paired by seed), the main table (the "other" backbone:
pretrained on the other real data) beside the paper's Table II with the paired differences
LoRA - full and QLoRA - LoRA, then rank ablation and training share where such rows exist.
Mean ± std over seeds; differences are paired by seed with a 95% t interval and a verdict
(fedhar.stats: difference / equivalent within ±1 point / inconclusive with the minimum detectable
difference, Holm-corrected per table), and only within one batch (fedhar.pairing: same code,
device, threads, epochs and backbone file); refused pairs are listed at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from fedhar.errors import FedharError
from fedhar.lodo import BACKBONES
from fedhar.pairing import cell, check_unique, pair, refused_section
from fedhar.stats import VERDICT_NOTE, holm, mean_std, paired_difference

#: what makes two LODO rows the same configuration (with the seed: the same run)
CONFIG_KEYS = ["held_out", "backbone_kind", "mode", "rank", "train_fraction", "split", "epochs", "device", "seed"]

# Table II: accuracy / macro-F1 per held-out dataset (our dataset names)
PAPER_TABLE_II = {
    "hhar": {"full": (0.981, 0.980), "lora": (0.960, 0.958), "qlora": (0.955, 0.952)},
    "realworld": {"full": (0.907, 0.907), "lora": (0.859, 0.861), "qlora": (0.860, 0.861)},
    "pamap2": {"full": (0.853, 0.854), "lora": (0.829, 0.825), "qlora": (0.829, 0.824)},
    "motionsense": {"full": (0.961, 0.958), "lora": (0.956, 0.950), "qlora": (0.955, 0.949)},
    "uci-har": {"full": (0.968, 0.969), "lora": (0.952, 0.953), "qlora": (0.953, 0.953)},
}
# Table VI: UCI-HAR LoRA rank -> macro-F1
PAPER_TABLE_VI = {8: 0.9352, 16: 0.9395, 20: 0.9434, 32: 0.9531, 48: 0.9602, 64: 0.9649}
# Table VII: UCI-HAR train share -> (full accuracy, LoRA accuracy)
PAPER_TABLE_VII = {0.7: (0.9676, 0.9528), 0.6: (0.9651, 0.9508), 0.5: (0.9618, 0.9483),
                   0.4: (0.9543, 0.9416), 0.3: (0.9380, 0.9257)}


def _pm(series: pd.Series) -> str:
    return mean_std(series)


MODE_ORDER = ("probe", "full", "lora", "qlora")
MAIN_BACKBONE = "other"


def _main_rank(rows: pd.DataFrame) -> int:
    ranks = rows[rows["mode"].isin(["lora", "qlora"])]["rank"].mode()
    return int(ranks.iloc[0]) if len(ranks) else 16


def _arm(rows: pd.DataFrame, rank: int, **where) -> pd.DataFrame:
    """The 70% protocol rows matching ``where`` (LoRA/QLoRA at ``rank``), one per seed: a repeated
    seed is an error naming both rows (fedhar.pairing.check_unique), never averaged."""
    sel = rows[(rows["train_fraction"] == 0.7) & ((~rows["mode"].isin(["lora", "qlora"])) | (rows["rank"] == rank))]
    for k, v in where.items():
        sel = sel[sel[k] == v]
    check_unique(sel, ["seed"], "LODO rows")
    return sel


def _compare(a: pd.DataFrame, b: pd.DataFrame, metric: str, refused: list[str], what: str, exempt=(), per_seed=()):
    """Paired difference of two arms' rows within one batch; refused pairs go to ``refused``."""
    p = pair(a, b, metric, exempt=exempt, per_seed=per_seed, what=what)
    refused += p.refused
    return paired_difference(p.a, p.b), p


def _cells(compared: list) -> list[str]:
    """Table cells of one family of comparisons [(diff, pairing)], Holm-corrected together."""
    diffs = holm([d for d, _ in compared])
    return [cell(d, p) for d, (_, p) in zip(diffs, compared)]


def pretraining_section(rows: pd.DataFrame, rank: int, refused: list[str]) -> list[str]:
    out: list[str] = []
    for (held, device), h in rows.groupby(["held_out", "device"], sort=True):
        main_protocol = h[h["train_fraction"] == 0.7]  # few-label rows have their own section
        kinds = [k for k in BACKBONES if k in set(main_protocol["backbone_kind"])]
        modes = [m for m in MODE_ORDER if m in set(main_protocol["mode"])]
        if "none" not in kinds or len(kinds) < 2:
            continue
        if not out:  # the heading only where a control exists to test against
            out = ["## Pretraining, tested: each backbone against the random-init control", "",
                   "Same held-out split per seed across backbones; 'probe' = the head alone on the frozen, "
                   "unadapted backbone (what its features carry). Accuracy, mean ± std over seeds.", ""]
        out += [f"### {held} held out ({device})", "",
                "| backbone | pretrained on | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
        for kind in kinds:
            k = h[h["backbone_kind"] == kind]
            cells = [_pm(_arm(h, rank, backbone_kind=kind, mode=m)["accuracy"]) for m in modes]
            out.append(f"| {kind} | {k['pretrained_on'].iloc[0]} | " + " | ".join(cells) + " |")
        out += ["", "Paired difference in accuracy, backbone minus the random-init control (points, 95% interval):", "",
                "| mode | " + " | ".join(f"{k} - none" for k in kinds if k != "none") + " |",
                "|---|" + "---|" * (len(kinds) - 1)]
        others = [k for k in kinds if k != "none"]
        compared = [_compare(_arm(h, rank, backbone_kind=kind, mode=m), _arm(h, rank, backbone_kind="none", mode=m),
                             "accuracy", refused, f"{held} ({device}) {m}: {kind} - none", exempt=("backbone",))
                    for m in modes for kind in others]
        cells = _cells(compared)
        for i, m in enumerate(modes):
            out.append(f"| {m} | " + " | ".join(cells[i * len(others):(i + 1) * len(others)]) + " |")
        out.append("")
    return out


def few_labels_section(rows: pd.DataFrame, refused: list[str]) -> list[str]:
    """The probe with a smaller labelled share of the subjects: where the features must carry
    the task, does pretraining show more? Each backbone paired with the random-init control."""
    few = rows[(rows["mode"] == "probe") & (rows["train_fraction"] < 0.7)]
    out: list[str] = []
    for (held, device), h in few.groupby(["held_out", "device"], sort=True):
        kinds = [k for k in BACKBONES if k in set(h["backbone_kind"]) and k != "none"]
        if "none" not in set(h["backbone_kind"]) or not kinds:
            continue
        if not out:
            out = ["## Few labels: the probe with 10-30% of the subjects labelled", "",
                   "Same split per seed and share across backbones; the rest of the subjects test. Accuracy.", ""]
        out += [f"### {held} held out ({device})", "",
                "| labelled subjects | none | " + " | ".join(kinds) + " | "
                + " | ".join(f"{k} - none" for k in kinds) + " |",
                "|---|---|" + "---|" * (2 * len(kinds))]
        shares = []
        for share, g in h.groupby("train_fraction"):
            by = {k: g[g["backbone_kind"] == k] for k in ["none", *kinds]}
            for arm in by.values():
                check_unique(arm, ["seed"], "LODO rows")
            compared = [_compare(by[k], by["none"], "accuracy", refused, f"{held} ({device}) probe {share:.0%}: {k} - none",
                                 exempt=("backbone",)) for k in kinds]
            shares.append((share, by, compared))
        cells = _cells([c for _, _, compared in shares for c in compared])
        for i, (share, by, _) in enumerate(shares):
            mine = cells[i * len(kinds):(i + 1) * len(kinds)]
            out.append(f"| {share:.0%} | {_pm(by['none']['accuracy'])} | " + " | ".join(_pm(by[k]["accuracy"]) for k in kinds)
                       + " | " + " | ".join(mine) + " |")
        out.append("")
    return out


def main_section(rows: pd.DataFrame, rank: int, refused: list[str]) -> list[str]:
    main = rows[(rows["backbone_kind"] == MAIN_BACKBONE) & rows["mode"].isin(["full", "lora", "qlora"])]
    out = [f"## Main table: backbone pretrained on the other real data; LoRA/QLoRA rank {rank} (paper Table II)", "",
           "Rows of different devices are never averaged together or paired (float results differ by device).", "",
           "| held out | pretrained on | device | mode | ours: accuracy | ours: macro-F1 | paper: accuracy | paper: macro-F1 |",
           "|---|---|---|---|---|---|---|---|"]
    for (held, device), h in main.groupby(["held_out", "device"], sort=True):
        for mode in ("full", "lora", "qlora"):
            arm = _arm(h, rank, mode=mode)
            acc, f1 = arm["accuracy"], arm["macro_f1"]
            if not len(acc):
                continue
            paper = PAPER_TABLE_II.get(held, {}).get(mode)
            p_acc, p_f1 = (f"{paper[0]:.3f}", f"{paper[1]:.3f}") if paper else ("-", "-")
            out.append(f"| {held} | {h['pretrained_on'].iloc[0]} | {device} | {mode} | {_pm(acc)} | {_pm(f1)} | {p_acc} | {p_f1} |")
    out += ["", "Paired differences (points, 95% interval over seeds; paper: its single numbers):", "",
            "| held out | device | LoRA - full: accuracy | LoRA - full: macro-F1 | QLoRA - LoRA: accuracy | QLoRA - LoRA: macro-F1 "
            "| paper LoRA - full | paper QLoRA - LoRA |",
            "|---|---|---|---|---|---|---|---|"]
    groups = list(main.groupby(["held_out", "device"], sort=True))
    # the modes compared share each seed's backbone; a study may pretrain a new one per seed
    compared = [_compare(_arm(h, rank, mode=a), _arm(h, rank, mode=b), metric, refused,
                         f"{held} ({device}) {a} - {b} {metric}", per_seed=("backbone",))
                for (held, device), h in groups for a, b in (("lora", "full"), ("qlora", "lora"))
                for metric in ("accuracy", "macro_f1")]
    # one Holm family per metric: accuracy and macro-F1 measure the same comparisons twice
    by_metric = [_cells(compared[j::2]) for j in (0, 1)]
    cells = [c for pair_ in zip(*by_metric) for c in pair_]
    for i, ((held, device), _) in enumerate(groups):
        paper_modes = PAPER_TABLE_II.get(held)
        paper_cells = [f"{(paper_modes[a][0] - paper_modes[b][0]) * 100:+.1f} pts" if paper_modes else "-"
                       for a, b in (("lora", "full"), ("qlora", "lora"))]
        out.append(f"| {held} | {device} | " + " | ".join(cells[4 * i:4 * i + 4] + paper_cells) + " |")
    return out + [""]


def comparison(rows: pd.DataFrame, folder: str = "results/lodo") -> str:
    if "backbone_kind" not in rows:
        rows = rows.assign(backbone_kind=MAIN_BACKBONE)
    rows = rows.assign(backbone_kind=rows["backbone_kind"].fillna(MAIN_BACKBONE),
                       device=rows["device"].fillna("cpu") if "device" in rows else "cpu")  # older rows: CPU
    check_unique(rows, CONFIG_KEYS, "LODO rows")
    rank = _main_rank(rows)
    refused: list[str] = []
    out = ["# LODO: fedhar beside arXiv 2512.17983", "",
           f"Generated by `python -m fedhar.lodo_report {folder}` from the runs.csv files here.", "",
           "Differences are paired by seed within one batch (same code, device, threads, epochs and backbone file; "
           "pairs that are not are listed under \"Pairs refused\"). " + VERDICT_NOTE, ""]
    out += pretraining_section(rows, rank, refused)
    out += few_labels_section(rows, refused)
    out += main_section(rows, rank, refused)
    main = rows[(rows["backbone_kind"] == MAIN_BACKBONE) & (rows["device"] == "cpu")]  # ablations: CPU rows
    uci = main[main["held_out"] == "uci-har"]
    ranks = uci[(uci["mode"] == "lora") & (uci["train_fraction"] == 0.7)]
    if ranks["rank"].nunique() > 1:
        out += ["", "## Rank ablation, UCI-HAR, LoRA (paper Table VI)", "",
                "| rank | ours: macro-F1 | ours: accuracy | trainable params | s/epoch | paper: macro-F1 |",
                "|---|---|---|---|---|---|"]
        for r, g in ranks.groupby("rank"):
            paper = PAPER_TABLE_VI.get(int(r))
            out.append(f"| {r} | {_pm(g['macro_f1'])} | {_pm(g['accuracy'])} | {g['trainable_params'].iloc[0]:,} | "
                       f"{g['sec_per_epoch'].median():.1f} | {paper if paper else '-'} |")
    shares = uci[uci["mode"].isin(["full", "lora"]) & ((uci["mode"] == "full") | (uci["rank"] == rank))]
    if shares["train_fraction"].nunique() > 1:
        out += ["", "## Training share, UCI-HAR (paper Table VII)", "",
                "| train / test | ours: full acc | ours: LoRA acc | paper: full acc | paper: LoRA acc |",
                "|---|---|---|---|---|"]
        for f, g in shares.groupby("train_fraction", sort=False):
            full, lora = g[g["mode"] == "full"]["accuracy"], g[g["mode"] == "lora"]["accuracy"]
            paper_accs = PAPER_TABLE_VII.get(round(f, 2))
            out.append(f"| {f:.0%} / {1 - f:.0%} | {_pm(full) if len(full) else '-'} | {_pm(lora) if len(lora) else '-'} | "
                       f"{paper_accs[0] if paper_accs else '-'} | {paper_accs[1] if paper_accs else '-'} |")
    every = rows[(rows["backbone_kind"] == MAIN_BACKBONE) & (rows["held_out"] == "uci-har")]
    sized = every if len(every) else rows[rows["backbone_kind"] == MAIN_BACKBONE]
    cost = sized[(sized["train_fraction"] == 0.7) & ((sized["mode"] == "full") | (sized["rank"] == rank))].groupby(
        ["device", "mode"]).agg(
        trainable=("trainable_params", "first"), total=("total_params", "first"),
        frozen=("frozen_bytes", "first"), state=("state_bytes", "first"), sec=("sec_per_epoch", "median"))
    out += ["", "## Cost per mode (UCI-HAR-sized runs; paper Tables III-V)", "",
            "| device | mode | trainable / total params | frozen weights as stored | training state | s/epoch |",
            "|---|---|---|---|---|---|"]
    for (device, mode), r in cost.iterrows():
        out.append(f"| {device} | {mode} | {int(r.trainable):,} / {int(r.total):,} | {r.frozen / 2**20:.2f} MiB | "
                   f"{r.state / 2**20:.1f} MiB | {r.sec:.1f} |")
    out += ["", "Paper: LoRA/QLoRA 428,832 trainable of 2,636,105; frozen weights 10.06 MB (LoRA) vs 6.22 MB (QLoRA).", ""]
    out += refused_section(refused)
    return "\n".join(number_tables(out)).rstrip("\n") + "\n"


def number_tables(lines: list[str]) -> list[str]:
    """"**Table N.**" above each markdown table, so that a README sentence can name its table."""
    out, n = [], 0
    for i, line in enumerate(lines):
        if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            n += 1
            out += [f"**Table {n}.**", ""]
        out.append(line)
    return out


def own_studies(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` with a comparison.md of their own: other studies, reported on their own."""
    return sorted(p.parent for p in folder.glob("*/**/comparison.md"))


def read_rows(folder: Path) -> pd.DataFrame:
    """Every runs.csv under ``folder`` but those of the studies ``own_studies`` names, each
    row's ``source`` its file and line."""
    frames = []
    skipped = own_studies(folder)
    for path in sorted(folder.glob("**/runs.csv")):
        if any(study in path.parents for study in skipped):
            continue
        frame = pd.read_csv(path)
        frames.append(frame.assign(source=[f"{path}:{i + 2}" for i in range(len(frame))]))
    if not frames:
        raise FedharError(f"{folder}: no runs.csv under it (fedhar lodo --out-dir writes one)")
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedhar.lodo_report", description=__doc__.splitlines()[0],
                                     epilog="Writes FOLDER/comparison.md and prints it.")
    parser.add_argument("folder", nargs="?", type=Path, default=Path("results/lodo"),
                        help="a folder with runs.csv files at any depth, as fedhar lodo writes them (default results/lodo)")
    folder = parser.parse_args(argv).folder
    try:
        text = comparison(read_rows(folder), str(folder))
        skipped = own_studies(folder)
        if skipped:
            text += "\nNot read here: " + ", ".join(f"`{p}`" for p in skipped) + " (studies with their own comparison.md).\n"
    except FedharError as e:
        print(f"lodo_report: error: {e}", file=sys.stderr)
        return 2
    (folder / "comparison.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
