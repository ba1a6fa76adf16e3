"""`fedhar data ...`: list, inspect, prepare and download datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from fedhar.data import paths
from fedhar.data.harmonise import AT_WINDOW_RATE
from fedhar.data.labels import ACTIVITIES, activities
from fedhar.data.loading import Prepared, find_dataset, load
from fedhar.data.registry import (
    SYNTHETIC,
    builtin_reader_names,
    dataset_names,
    get_reader,
    is_folder_item,
    reader_names,
    register_folder,
)
from fedhar.data.schema import CHANNEL_UNITS, CHANNELS
from fedhar.data.splits import subject_split
from fedhar.errors import DatasetNotFoundError, FedharError
from fedhar.options import READERS_HELP, SYNTHETIC_DOMAINS, SYNTHETIC_SEED, SYNTHETIC_SUBJECTS, check_name, choice


def register(commands) -> None:
    data = commands.add_parser(
        "data",
        help="list, inspect, prepare and download HAR datasets",
        description="Datasets in their published layouts, harmonised to 50 Hz, 6 channels, "
        "128-sample windows with 50% overlap.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def common(p, many=False):
        names = f"one of: {', '.join(dataset_names())}; or a folder with a manifest.csv (path/to/folder)"
        if many:
            p.add_argument("names", nargs="*", metavar="DATASET", type=dataset_arg, help=names)
        else:
            p.add_argument("name", metavar="DATASET", type=dataset_arg, help=names)
        p.add_argument("--data-dir", type=Path, help="folder holding the datasets (else $FEDHAR_DATA_DIR, ./data, ...)")
        add_synthetic_options(p)

    p = sub.add_parser("list", help="which datasets are known and where they were found")
    p.add_argument("--data-dir", type=Path, help="look only in this folder")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("info", help="windows per class and per subject, label mapping, repairs and drops")
    common(p)
    p.add_argument("--rebuild", action="store_true", help="ignore the cache and prepare again")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("prepare", help="prepare datasets into the window cache")
    common(p, many=True)
    p.add_argument("--all", action="store_true", help="every dataset that is found")
    p.add_argument("--rebuild", action="store_true", help="ignore the cache and prepare again")
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("download", help="fetch a dataset from its canonical source, verify and unpack it")
    p.add_argument("name", metavar="DATASET", type=choice("downloadable dataset", builtin_reader_names),
                   help=f"one of: {', '.join(builtin_reader_names())}")
    p.add_argument("--dest", type=Path, help=f"folder to unpack into (default {paths.download_dir()})")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.set_defaults(run=cmd_download)


def dataset_arg(text: str) -> str:
    """A dataset name, or a folder dataset's path (registered here; its name is returned).
    A bad folder raises FedharError, which argparse lets through to `fedhar: error: <file>:<line>`."""
    if is_folder_item(text):
        return register_folder(text)
    return choice("dataset", dataset_names)(text)


def add_readers_option(p: argparse.ArgumentParser) -> None:
    """--readers, as `fedhar fl` has it (the command checks its dataset names after registering them)."""
    p.add_argument("--readers", default="", metavar="ITEM[,ITEM...]", help=READERS_HELP)


def add_synthetic_options(p: argparse.ArgumentParser) -> None:
    """--synthetic-domains/-subjects/-seed: the same names and defaults (fedhar.options) as `fedhar fl`'s."""
    g = p.add_argument_group("synthetic data (dataset 'synthetic')")
    g.add_argument("--synthetic-domains", type=int, default=SYNTHETIC_DOMAINS,
                   help="number of domains (each like a dataset)")
    g.add_argument("--synthetic-subjects", type=int, default=SYNTHETIC_SUBJECTS,
                   help="subjects per domain")
    g.add_argument("--synthetic-seed", type=int, default=SYNTHETIC_SEED, help="generator seed")


def synthetic_config(args):
    from fedhar.data.synthetic import SyntheticConfig

    return SyntheticConfig(n_domains=args.synthetic_domains, subjects_per_domain=args.synthetic_subjects,
                           seed=args.synthetic_seed)


def _load(name: str, args, rebuild: bool = False) -> Prepared:
    check_name("dataset", name, dataset_names())
    synthetic = synthetic_config(args) if name == SYNTHETIC else None
    return load(name, args.data_dir, synthetic=synthetic, progress=True, rebuild=rebuild)


def cmd_list(args) -> int:
    dirs = paths.data_dirs(args.data_dir)
    print("Data directories searched, in order:")
    for d, why in dirs:
        print(f"  {'found ' if d.is_dir() else 'absent'}  {d}  ({why})")
    rows = []
    for name in reader_names():
        reader = get_reader(name)
        try:
            root = find_dataset(name, args.data_dir)
            note = reader.describe_root(root)
            where = f"{root} ({note})" if note else str(root)
        except DatasetNotFoundError:
            where = "not found"
        rows.append((name, reader.title, where))
    rows.append((SYNTHETIC, "embedded synthetic HAR generator (fedhar.data.synthetic)", "generated, needs no files"))
    width = max(len(r[0]) for r in rows)
    print("\nDatasets:")
    for name, title, where in rows:
        print(f"  {name:<{width}}  {where}\n  {'':<{width}}  {title}")
    missing = [r[0] for r in rows if r[2] == "not found"]
    if missing:
        print(f"\nNot found: {', '.join(missing)}. `fedhar data download NAME` fetches one.")
    return 0


def counts_table(prepared: Prepared) -> pd.DataFrame:
    ws = prepared.windows
    df = pd.DataFrame({"subject": ws.subject_keys() if len(ws.datasets()) > 1 else ws.subject,
                       "activity": np.asarray(activities())[ws.y]})
    table = pd.crosstab(df["subject"], df["activity"], margins=True, margins_name="total")
    ordered = [a for a in activities() if a in table.columns] + ["total"]
    return table[ordered]


def cmd_info(args) -> int:
    prepared = _load(args.name, args, args.rebuild)
    ws, report = prepared.windows, prepared.report
    origin = "cache" if prepared.from_cache else "prepared now"
    print(f"dataset      {args.name}")
    if prepared.root is not None:
        print(f"read from    {prepared.root}")
    print(f"windows      {len(ws)}  ({origin}, {prepared.seconds:.2f} s; cache {prepared.cache_file})")
    print(f"form         {ws.x.shape[1]} channels x {ws.x.shape[2]} samples at 50 Hz: "
          + ", ".join(f"{c} [{u}]" for c, u in zip(CHANNELS, CHANNEL_UNITS)))
    print(f"subjects     {len(np.unique(ws.subject_keys()))}")
    print(f"activities   {len(np.unique(ws.y))}")
    if args.name != SYNTHETIC:
        reader = get_reader(args.name)
        if reader.channels_note:
            print(f"channels     {reader.channels_note}")
        print("\nLabel mapping (native -> fedhar activity; None = dropped on purpose; new = not one of fedhar's "
              "built-in activities, added to the union label space):")
        for native, name in reader.label_map.items():
            new = "  (new)" if name is not None and name not in ACTIVITIES else ""
            print(f"  {native!s:>20} -> {name}{new}")
        if reader.published_test_subjects:
            train, test = subject_split(ws, test_subjects={args.name: reader.published_test_subjects})
            print(f"\nPublished split: test subjects {list(reader.published_test_subjects)}: "
                  f"{len(train)} train / {len(test)} test windows")
    print(f"\nRead: {report.files_read} files, {report.recordings} recordings, {report.samples_in} samples "
          "(at their native rates)")
    for title, counter in (("Repairs (deliberate, known quirks)", report.repairs),
                           ("Dropped (at the native rate unless marked 50 Hz: counted after resampling)", report.dropped)):
        if counter:
            print(f"{title}:")
            for what, n in sorted(counter.items()):
                print(f"  {n:>10}  {what}{'  (50 Hz)' if what in AT_WINDOW_RATE else ''}")
    for note in report.notes:
        kind, _, text = note.partition(": ")
        print(f"{kind.capitalize()}: {text}" if kind in ("warning", "note") else f"Note: {note}")
    print("\nWindows per subject and activity:")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500):
        print(counts_table(prepared).to_string())
    return 0


def cmd_prepare(args) -> int:
    names = list(args.names)
    if args.all:
        for name in reader_names():
            try:
                find_dataset(name, args.data_dir)
            except FedharError:
                continue
            names.append(name)
    if not names:
        raise FedharError("name at least one dataset, or --all")
    for name in names:
        prepared = _load(name, args, args.rebuild)
        origin = "from cache" if prepared.from_cache else "prepared"
        print(f"{name}: {len(prepared.windows)} windows, {len(np.unique(prepared.windows.subject_keys()))} "
              f"subjects ({origin} in {prepared.seconds:.1f} s) -> {prepared.cache_file}")
    return 0


def cmd_download(args) -> int:
    from fedhar.data.download import download

    root = download(args.name, args.dest, force=args.force)
    print(f"{args.name} is ready in {root}")
    searched = {d.resolve() for d, _ in paths.data_dirs()}
    if args.dest is not None and args.dest.resolve() not in searched:
        print(f"{args.dest} is not searched by default: pass --data-dir {args.dest} "
              f"or set FEDHAR_DATA_DIR={args.dest}")
    return 0
