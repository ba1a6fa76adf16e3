"""Reader of HAPT: Smartphone-Based Recognition of Human Activities and Postural Transitions.

UCI Machine Learning Repository, dataset 341 (version 2.1, Reyes-Ortiz, Oneto, Samà, Parra,
Anguita, "Transition-Aware Human Activity Recognition Using Smartphones", Neurocomputing
2016). The raw recordings behind UCI-HAR: 30 volunteers, a Samsung Galaxy S II on the waist,
61 experiments (user 10 has three, every other user two), 1,122,772 samples per sensor.

Layout read (the dataset's own README.txt):
    RawData/acc_expXX_userYY.txt   one sample per line, "x y z" separated by one space,
                                   acceleration in g (gravity included), 50 Hz
    RawData/gyro_expXX_userYY.txt  same, angular velocity in rad/s, 50 Hz, sample-aligned
                                   with the acc file of the same experiment
    RawData/labels.txt             one labelled segment per line:
                                   "experiment user activity start end", start/end 1-based
                                   sample indices, inclusive (1214 segments)
    activity_labels.txt            "1 WALKING" ... "12 LIE_TO_STAND" (not needed: the table
                                   is ``HaptReader.label_map``)
The 561-feature Train/Test folders of the full download are not read.

Units and conversions: acc [g] x STANDARD_GRAVITY (9.80665) -> m/s^2; gyro already rad/s.
One Recording per experiment, subject = user number (1-30), rate 50 Hz.

Labels: samples inside a segment get the segment's activity; samples between segments
(e.g. the first ~250 samples of each experiment) are unlabelled (-1), dropped and counted by
harmonise. Native ids -> global activities:
    1 walking   2 upstairs   3 downstairs   4 sitting   5 standing   6 lying (LAYING)
    7 stand_to_sit   8 sit_to_stand   9 sit_to_lie   10 lie_to_sit
    11 stand_to_lie   12 lie_to_stand

Quirks checked on the real data: acc and gyro files of every experiment have the same
number of lines (so a mismatch is an error, not something to repair); segments never
overlap and never leave their recording; no two adjacent segments share an activity.
Errors (DataFormatError naming file and line): missing files, malformed lines (wrong column
count, non-numeric or non-finite cells, blank lines inside a file), acc/gyro length
mismatch, unknown activity id, a segment outside its recording, overlapping segments, a
segment naming an experiment without files or a user other than the files' user.

``read_table`` (a fast pandas parse with an exact line-by-line diagnosis on failure) is also
used by the uci-har reader.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedhar.data.labels import ACTIVITY_ID, UNLABELLED
from fedhar.data.readers.base import Reader
from fedhar.data.schema import STANDARD_GRAVITY, PrepareReport, Recording
from fedhar.errors import DataFormatError

RATE_HZ = 50.0
RAW_DIR = "RawData"
LABELS_FILE = "labels.txt"
_SIGNAL_FILE = re.compile(r"^(acc|gyro)_exp(\d+)_user(\d+)\.txt$")


# --------------------------------------------------------------------------- parsing


def read_table(path: Path, ncols: int, dtype=np.float64) -> np.ndarray:
    """All rows of a whitespace-separated numeric text file as an (N, ncols) array.

    Parses with pandas' C engine; when that fails or yields holes, re-scans the file line by
    line so the error names the first bad line. Trailing blank lines are tolerated; blank
    lines between data lines are not (they would shift sample indices).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "is a folder, not a file" if path.is_dir() else "file is missing")
    try:
        # no ``names``: with them, pandas would take an extra first field as the index and
        # silently shift the columns; the column count is checked instead
        frame = pd.read_csv(path, sep=r"\s+", header=None, dtype=dtype, engine="c", skip_blank_lines=False)
        table = frame.to_numpy(dtype=dtype)
    except OSError as e:
        raise DataFormatError(path, f"cannot read the file ({e.strerror})") from None
    except (ValueError, OverflowError):  # pandas' ParserError/EmptyDataError are ValueErrors
        return _scan_table(path, ncols, dtype)
    if len(table) == 0 or table.shape[1] != ncols or not np.isfinite(table).all():
        return _scan_table(path, ncols, dtype)
    return table


def _scan_table(path: Path, ncols: int, dtype) -> np.ndarray:
    """Slow exact parse: raises DataFormatError at the first bad line, else the table."""
    convert = int if np.issubdtype(dtype, np.integer) else float
    kind = "an integer" if convert is int else "a number"
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        raise DataFormatError(path, "is not plain ASCII text (UTF-16 or binary?): save it as ASCII/UTF-8")
    rows: list[list] = []
    blank_at = None
    with open(path, encoding="ascii", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            cells = line.split()
            if not cells:
                blank_at = blank_at or lineno
                continue
            if blank_at is not None:
                raise DataFormatError(path, "blank line between data lines", line=blank_at)
            if len(cells) != ncols:
                hint = " (truncated row?)" if len(cells) < ncols else ""
                raise DataFormatError(
                    path, f"expected {ncols} columns, found {len(cells)}{hint}", line=lineno
                )
            try:
                values = [convert(c) for c in cells]
            except ValueError:
                bad = next(c for c in cells if not _parses(convert, c))
                raise DataFormatError(path, f"not {kind}: {bad!r}", line=lineno) from None
            if convert is float and not all(np.isfinite(values)):
                raise DataFormatError(path, "non-finite value (nan or inf)", line=lineno)
            rows.append(values)
    if not rows:
        raise DataFormatError(path, "file is empty")
    return np.asarray(rows, dtype=dtype)


def _parses(convert, cell: str) -> bool:
    try:
        convert(cell)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- layout


def raw_dir(root: Path) -> Path:
    raw = Path(root) / RAW_DIR
    if not raw.is_dir():
        raise DataFormatError(raw, "is a file, not the folder of raw recordings" if raw.exists() else "folder is missing")
    return raw


@dataclass(frozen=True)
class Experiment:
    number: int
    user: int
    acc: Path
    gyro: Path


def find_experiments(root: Path) -> dict[int, Experiment]:
    """Experiment number -> its acc/gyro files, from the names in RawData/."""
    raw = raw_dir(root)
    found: dict[int, dict] = {}
    for path in sorted(raw.iterdir()):
        m = _SIGNAL_FILE.match(path.name)
        if not m:
            continue
        sensor, exp, user = m.group(1), int(m.group(2)), int(m.group(3))
        entry = found.setdefault(exp, {"user": user})
        if entry["user"] != user:
            raise DataFormatError(
                path, f"experiment {exp} is already filed under user {entry['user']}"
            )
        if sensor in entry:  # acc_exp1_user01.txt beside acc_exp01_user01.txt
            raise DataFormatError(
                path, f"experiment {exp} already has the {sensor} file {entry[sensor].name}: "
                "which one to read is ambiguous"
            )
        entry[sensor] = path
    experiments = {}
    for exp, entry in sorted(found.items()):
        name = f"exp{exp:02d}_user{entry['user']:02d}.txt"
        for sensor in ("acc", "gyro"):
            if sensor not in entry:
                other = entry["gyro" if sensor == "acc" else "acc"]
                raise DataFormatError(
                    raw / f"{sensor}_{name}", f"file is missing (its partner {other.name} exists)"
                )
        experiments[exp] = Experiment(exp, entry["user"], entry["acc"], entry["gyro"])
    if not experiments:
        raise DataFormatError(raw, "no acc_expXX_userYY.txt / gyro_expXX_userYY.txt files")
    return experiments


@dataclass(frozen=True)
class Segment:
    experiment: int
    user: int
    activity: int  # native id
    start: int  # 0-based, inclusive
    stop: int  # 0-based, exclusive
    line: int  # line in labels.txt


# --------------------------------------------------------------------------- reader


class HaptReader(Reader):
    name = "hapt"
    title = "HAPT (UCI 341): waist smartphone, 30 subjects, 6 activities + 6 postural transitions"
    folder_names = ("hapt", "HAPT Data Set", "HAPT")
    label_map = {
        1: "walking",
        2: "upstairs",
        3: "downstairs",
        4: "sitting",
        5: "standing",
        6: "lying",
        7: "stand_to_sit",
        8: "sit_to_stand",
        9: "sit_to_lie",
        10: "lie_to_sit",
        11: "stand_to_lie",
        12: "lie_to_stand",
    }
    published_test_subjects = (2, 4, 9, 10, 12, 13, 18, 20, 24)
    channels_note = (
        "Samsung Galaxy S II on the waist, 50 Hz; accelerometer in g x 9.80665 -> m/s^2 "
        "(gravity included), gyroscope in rad/s"
    )

    def looks_like_root(self, root: Path) -> bool:
        # a RawData entry is enough: what is wrong inside it is then an error naming the file
        # (a missing labels.txt), not "dataset not found"
        return (Path(root) / RAW_DIR).exists()

    def source_files(self, root: Path) -> list[Path]:
        raw = raw_dir(root)
        signal_files = [p for p in raw.iterdir() if _SIGNAL_FILE.match(p.name)]
        return [raw / LABELS_FILE, *sorted(signal_files)]

    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording]:
        root = Path(root)
        experiments = find_experiments(root)
        segments = self.read_segments(root / RAW_DIR / LABELS_FILE, experiments, report)
        users = {e.user for e in experiments.values()}
        report.notes.append(
            f"HAPT: {len(experiments)} experiments of {len(users)} users, "
            f"{sum(map(len, segments.values()))} labelled segments; samples between segments "
            "are unlabelled"
        )
        for exp in experiments.values():
            yield self.read_experiment(exp, segments.get(exp.number, []), report)

    def read_segments(
        self, path: Path, experiments: dict[int, Experiment], report: PrepareReport
    ) -> dict[int, list[Segment]]:
        """labels.txt, checked against label_map and the experiments on disk."""
        table = read_table(path, 5, np.int64)
        report.files_read += 1
        by_experiment: dict[int, list[Segment]] = {}
        for i, (exp, user, activity, start, end) in enumerate(table.tolist()):
            line = i + 1
            if activity not in self.label_map:
                known = f"{min(self.label_map)}-{max(self.label_map)}"
                message = f"unknown activity id {activity} (known: {known})"
                raise DataFormatError(path, message, line)
            if exp not in experiments:
                raise DataFormatError(
                    path, f"experiment {exp} has no acc/gyro files in {path.parent}", line
                )
            if experiments[exp].user != user:
                owner = experiments[exp].user
                message = f"experiment {exp} belongs to user {owner}, not {user}"
                raise DataFormatError(path, message, line)
            if start < 1 or end < start:
                raise DataFormatError(path, f"bad segment bounds {start}..{end}", line)
            segment = Segment(exp, user, activity, start - 1, end, line)
            by_experiment.setdefault(exp, []).append(segment)
        return by_experiment

    def read_experiment(
        self, exp: Experiment, segments: list[Segment], report: PrepareReport
    ) -> Recording:
        acc = read_table(exp.acc, 3)
        report.files_read += 1
        gyro = read_table(exp.gyro, 3)
        report.files_read += 1
        if len(acc) != len(gyro):
            shorter, longer = (exp.acc, exp.gyro) if len(acc) < len(gyro) else (exp.gyro, exp.acc)
            raise DataFormatError(
                shorter,
                f"{min(len(acc), len(gyro))} samples but {longer.name} has {max(len(acc), len(gyro))}: "
                f"the two files of experiment {exp.number} must be sample-aligned (truncated?)",
            )
        labels = self.segment_labels(len(acc), segments, exp)
        with np.errstate(over="ignore"):
            acc = acc * STANDARD_GRAVITY
        if not np.isfinite(acc).all():
            line = int(np.flatnonzero(~np.isfinite(acc).all(axis=1))[0]) + 1
            raise DataFormatError(exp.acc, "value out of range (overflows when converted from g to m/s^2)", line)
        signal = np.concatenate([acc, gyro], axis=1)
        return Recording(signal, labels, RATE_HZ, exp.user, f"{exp.acc} + {exp.gyro.name}")

    def segment_labels(self, n: int, segments: list[Segment], exp: Experiment) -> np.ndarray:
        labels = np.full(n, UNLABELLED, np.int64)
        labels_file = exp.acc.parent / LABELS_FILE
        for seg in sorted(segments, key=lambda s: s.start):
            if seg.stop > n:
                raise DataFormatError(
                    labels_file,
                    f"segment ends at sample {seg.stop} but {exp.acc.name} has {n} samples",
                    seg.line,
                )
            if (labels[seg.start : seg.stop] != UNLABELLED).any():
                raise DataFormatError(labels_file, "segment overlaps an earlier segment", seg.line)
            labels[seg.start : seg.stop] = ACTIVITY_ID[self.label_map[seg.activity]]
        return labels
