"""Reader of PAMAP2 Physical Activity Monitoring (Reiss & Stricker, ISWC 2012; UCI id 231).

9 subjects (ids 101-109) wore three Colibri wireless IMUs (100 Hz) on the dominant wrist,
the chest and the dominant ankle, and a heart-rate monitor, while following a protocol of
12 activities; some also did optional ones.

Layout read (the published ``PAMAP2_Dataset.zip``, unpacked)::

    <root>/Protocol/subject101.dat ... subject109.dat

``<root>`` is the ``PAMAP2_Dataset`` folder. ``Optional/`` (extra sessions, mostly
activities outside the label space) is not read; a note says so. All nine protocol files
are required. Each line of a .dat file is one 100 Hz sample: 54 numbers separated by
single spaces, missing values written ``NaN`` (dataset readme.pdf, section II.1)::

    1      timestamp (s)
    2      activityID
    3      heart rate (bpm; ~9 Hz, so mostly NaN)
    4-20   IMU hand       21-37  IMU chest       38-54  IMU ankle
    per IMU: 1 temperature (C), 2-4 acceleration m/s^2 (+-16 g scale, 13 bit),
             5-7 acceleration m/s^2 (+-6 g scale; saturates, the authors recommend the
             16 g one), 8-10 gyroscope rad/s, 11-13 magnetometer uT, 14-17 orientation
             (invalid in this data collection)

Channels used: the CHEST IMU, the one nearest the waist (where the other datasets' phones
are): its 16 g accelerometer (columns 22-24, m/s^2 with gravity, used as is) and its
gyroscope (columns 28-30, rad/s). Hand and ankle IMUs, the 6 g accelerometer, heart rate,
temperature, magnetometer and orientation are not used. Rate 100 Hz; subject = the
published id (101-109).

Labels (activityID -> global activity): 1 lying, 2 sitting, 3 standing, 4 walking,
5 running, 6 cycling, 7 nordic_walking, 12 ascending stairs -> upstairs, 13 descending
stairs -> downstairs, 16 vacuum_cleaning, 17 ironing, 24 rope_jumping. Dropped on purpose
and counted: 0 (transient activities, "should be discarded" per the readme) and the ids
without a global name, 9 watching TV, 10 computer work, 11 car driving, 18 folding
laundry, 19 house cleaning, 20 playing soccer (optional activities). Other ids are errors.

Quirks handled (all counted in the report):
- wireless drop-outs leave NaN in an IMU's columns: NaN stretches of the used channels up
  to ``MAX_FILL_SAMPLES`` (0.1 s) inside a recording are filled by linear interpolation
  (``report.repairs``); longer ones, or ones at a recording's edge, are left out and split
  the recording (``report.dropped``);
- parts of an aborted recording were put together during transient activities: the
  timestamp jumps there; recordings are split wherever consecutive timestamps are not
  0.01 s apart (``report.repairs``).

Errors (DataFormatError naming file and line): a missing protocol file, a line with other
than 54 cells (truncated row), a non-numeric cell (other than ``NaN``), an infinite value,
a missing timestamp or activityID, and an activityID outside the label table.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fedhar.data.labels import ACTIVITY_ID, UNLABELLED
from fedhar.data.readers.base import Reader
from fedhar.data.schema import PrepareReport, Recording
from fedhar.errors import DataFormatError

RATE_HZ = 100.0
N_COLUMNS = 54
SUBJECTS: tuple[int, ...] = tuple(range(101, 110))
PROTOCOL_DIR = "Protocol"
OPTIONAL_DIR = "Optional"
NAN_TOKEN = "NaN"
MISSING_FILE = "file is missing; the published Protocol/ holds subject101.dat ... subject109.dat"

# 0-based columns: 0 timestamp, 1 activityID, 2 heart rate, 3-19 hand, 20-36 chest, 37-53 ankle
TIME_COL, ACTIVITY_COL = 0, 1
IMU_START = {"hand": 3, "chest": 20, "ankle": 37}
ACC16_OFFSET, GYRO_OFFSET = 1, 7  # within an IMU block (temperature is offset 0)
CHEST_COLUMNS: tuple[int, ...] = tuple(
    IMU_START["chest"] + off + axis for off in (ACC16_OFFSET, GYRO_OFFSET) for axis in range(3)
)  # 21, 22, 23 (16 g acc) and 27, 28, 29 (gyro)

MAX_FILL_SAMPLES = 10  # NaN stretches up to 0.1 s are interpolated
STEP_S = 1.0 / RATE_HZ
STEP_TOLERANCE_S = 0.5 * STEP_S  # consecutive timestamps further off than this: a jump

LABEL_MAP: dict[int, str | None] = {
    0: None,  # transient activities
    1: "lying",
    2: "sitting",
    3: "standing",
    4: "walking",
    5: "running",
    6: "cycling",
    7: "nordic_walking",
    9: None,  # watching TV
    10: None,  # computer work
    11: None,  # car driving
    12: "upstairs",
    13: "downstairs",
    16: "vacuum_cleaning",
    17: "ironing",
    18: None,  # folding laundry
    19: None,  # house cleaning
    20: None,  # playing soccer
    24: "rope_jumping",
}
_SUBJECT_FILE = re.compile(r"^subject(\d{3})\.dat$")


# --------------------------------------------------------------------------- parsing


def line_cell_counts(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(1-based line number, number of whitespace-separated cells) of every line."""
    b = np.frombuffer(data, dtype=np.uint8)
    if len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    space = b <= 32  # space, tab, CR, LF (numbers and letters are all above)
    cell_start = np.empty_like(space)
    cell_start[0] = not space[0]
    np.greater(space[:-1], space[1:], out=cell_start[1:])  # a blank, then a non-blank
    line_starts = np.concatenate([[0], np.flatnonzero(b == 10) + 1])
    line_starts = line_starts[line_starts < len(b)]
    bounds = np.searchsorted(np.flatnonzero(cell_start), np.append(line_starts, len(b)))
    return np.arange(1, len(line_starts) + 1), np.diff(bounds)


def read_protocol_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(rows (N, 54) float64, 1-based line of each row) of one subject .dat file."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, MISSING_FILE)
    data = path.read_bytes()
    lines, counts = line_cell_counts(data)
    wrong = np.flatnonzero((counts != N_COLUMNS) & (counts != 0))
    if len(wrong):
        i = int(wrong[0])
        hint = " (truncated row?)" if counts[i] < N_COLUMNS else ""
        raise DataFormatError(
            path, f"expected {N_COLUMNS} space-separated cells, found {counts[i]}{hint}",
            line=int(lines[i]),
        )
    row_lines = lines[counts == N_COLUMNS]  # pandas skips the blank ones too
    if len(row_lines) == 0:
        return np.zeros((0, N_COLUMNS)), row_lines
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            sep=r"\s+",
            header=None,
            engine="c",
            dtype=np.float64,
            keep_default_na=False,
            na_values=[NAN_TOKEN],  # the published missing-value token, nothing else
        )
    except (ValueError, OverflowError) as exc:
        _raise_first_bad_cell(path, data, str(exc))
    table = frame.to_numpy(dtype=np.float64)
    if table.shape != (len(row_lines), N_COLUMNS):
        _raise_first_bad_cell(path, data, f"parsed shape {table.shape}")
    infinite = np.flatnonzero(np.isinf(table).any(axis=1))
    if len(infinite):
        raise DataFormatError(path, "infinite value", line=int(row_lines[infinite[0]]))
    return table, row_lines


def _raise_first_bad_cell(path: Path, data: bytes, why: str):
    """Scan line by line for the first cell that is neither a number nor NaN."""
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        for column, cell in enumerate(line.split(), start=1):
            if cell == NAN_TOKEN:
                continue
            try:
                value = float(cell)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value):
                raise DataFormatError(
                    path, f"not a number in column {column}: {cell!r}", line=lineno
                ) from None
    raise DataFormatError(path, f"could not be parsed ({why}); no single bad line found")


def activity_ids(path: Path, table: np.ndarray, row_lines: np.ndarray) -> np.ndarray:
    """Global activity id per row (UNLABELLED for ids mapped to None); checks the ids."""
    time, activity = table[:, TIME_COL], table[:, ACTIVITY_COL]
    bad = np.flatnonzero(~np.isfinite(time) | ~np.isfinite(activity))
    if len(bad):
        raise DataFormatError(path, "missing timestamp or activityID", line=int(row_lines[bad[0]]))
    known = np.array(sorted(LABEL_MAP), dtype=np.float64)
    unknown = np.flatnonzero(~np.isin(activity, known))
    if len(unknown):
        i = unknown[0]
        raise DataFormatError(
            path,
            f"unknown activityID {activity[i]:g} (known: {', '.join(map(str, sorted(LABEL_MAP)))})",
            line=int(row_lines[i]),
        )
    lookup = np.full(max(LABEL_MAP) + 1, UNLABELLED, dtype=np.int64)
    for native, name in LABEL_MAP.items():
        if name is not None:
            lookup[native] = ACTIVITY_ID[name]
    return lookup[activity.astype(np.int64)]


# --------------------------------------------------------------------------- repairs


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) of the maximal runs of True in a boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def contiguous_pieces(time: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, int]:
    """Per pair of neighbours: True where both are usable and 0.01 s apart. Also returns
    the number of timestamp jumps between two usable neighbours."""
    step_ok = np.abs(np.diff(time) - STEP_S) <= STEP_TOLERANCE_S
    both = usable[:-1] & usable[1:]
    return both & step_ok, int((both & ~step_ok).sum())


def fill_short_dropouts(
    signal: np.ndarray, labelled: np.ndarray, linked: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Interpolate NaN stretches of <= MAX_FILL_SAMPLES rows that lie inside one contiguous
    labelled piece; returns (filled signal, rows still invalid, rows filled)."""
    invalid = labelled & ~np.isfinite(signal).all(axis=1)
    starts, stops = runs(invalid)
    n = len(signal)
    # a run is fillable when linked to valid rows on both sides through unbroken steps
    broken = np.concatenate([[0], np.cumsum(~linked)])  # broken[i]: breaks before row i
    inside = (starts > 0) & (stops < n)
    before = np.maximum(starts - 1, 0)
    after = np.minimum(stops, n - 1)
    unbroken = broken[after] - broken[before] == 0
    fillable = inside & unbroken & (stops - starts <= MAX_FILL_SAMPLES)
    fill = np.zeros(n, dtype=bool)
    for a, b in zip(starts[fillable], stops[fillable]):
        fill[a:b] = True
    out = signal.copy()
    index = np.arange(n)
    for c in range(signal.shape[1]):
        finite = np.isfinite(signal[:, c])
        target = fill & ~finite
        if target.any():
            out[target, c] = np.interp(index[target], index[finite], signal[finite, c])
    return out, invalid & ~fill, int(fill.sum())


# --------------------------------------------------------------------------- reader


class Pamap2Reader(Reader):
    name = "pamap2"
    version = 1
    title = "PAMAP2: chest IMU (16 g acc + gyro), 9 subjects, 12 protocol activities, 100 Hz"
    folder_names = ("PAMAP2_Dataset", "pamap2/PAMAP2_Dataset", "pamap2")
    label_map = LABEL_MAP
    channels_note = (
        "chest IMU (the one nearest the waist): 16 g accelerometer m/s^2 with gravity "
        "(columns 22-24) and gyroscope rad/s (columns 28-30), as published; 100 Hz"
    )

    def looks_like_root(self, root: Path) -> bool:
        protocol = Path(root) / PROTOCOL_DIR
        return protocol.is_dir() and any(protocol.glob("subject1*.dat"))

    def source_files(self, root: Path) -> list[Path]:
        return [Path(root) / PROTOCOL_DIR / f"subject{s}.dat" for s in SUBJECTS]

    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording]:
        files = self.source_files(root)
        for path in files:  # all present before the first long parse
            if not path.is_file():
                raise DataFormatError(path, MISSING_FILE)
        report.notes.append(
            f"pamap2: {PROTOCOL_DIR}/ only; {OPTIONAL_DIR}/ (optional activities) is not read"
        )
        report.notes.append(
            "pamap2: chest IMU (16 g accelerometer + gyroscope); hand, ankle, 6 g accelerometer, "
            "heart rate, magnetometer and orientation are not used"
        )
        for path in files:
            named = _SUBJECT_FILE.match(path.name)
            if named is None:  # source_files builds every name from SUBJECTS
                raise ValueError(f"pamap2: not a subjectNNN.dat file: {path}")
            subject = int(named.group(1))
            yield from self._read_subject(path, subject, report)

    def _read_subject(self, path: Path, subject: int, report: PrepareReport) -> Iterator[Recording]:
        table, row_lines = read_protocol_file(path)
        report.files_read += 1
        labels = activity_ids(path, table, row_lines)
        activity = table[:, ACTIVITY_COL]
        transient = int((activity == 0).sum())
        outside = int(((labels == UNLABELLED) & (activity != 0)).sum())
        if transient:
            report.dropped["samples of transient activities (activityID 0), samples"] += transient
        if outside:
            report.dropped[
                "samples of activities outside the label space (ids 9, 10, 11, 18, 19, 20), samples"
            ] += outside
        if len(table) == 0:
            return
        labelled = labels != UNLABELLED
        time = table[:, TIME_COL]
        linked, jumps = contiguous_pieces(time, labelled)
        if jumps:
            report.repairs["recordings split at timestamp jumps, splits"] += jumps
        signal, dropped, filled = fill_short_dropouts(table[:, CHEST_COLUMNS], labelled, linked)
        if filled:
            report.repairs[
                f"chest IMU samples interpolated over wireless drop-outs <= {MAX_FILL_SAMPLES} "
                "samples (0.1 s), samples"
            ] += filled
        if dropped.any():
            report.dropped[
                "chest IMU samples in drop-outs > 0.1 s or at a recording's edge, samples"
            ] += int(dropped.sum())
        usable = labelled & ~dropped
        linked = linked & usable[:-1] & usable[1:]
        starts, stops = runs(usable)
        # split usable runs further wherever two neighbours are not linked (time jumps)
        cuts = np.flatnonzero(~linked) + 1
        bounds = np.unique(np.concatenate([starts, stops, cuts]))
        for a, b in zip(bounds[:-1], bounds[1:]):
            if not usable[a]:
                continue
            if b - a < 2:
                report.dropped["isolated single samples between splits, samples"] += int(b - a)
                continue
            yield Recording(
                signal=signal[a:b],
                labels=labels[a:b],
                rate=RATE_HZ,
                subject=subject,
                source=f"{path}:{int(row_lines[a])}-{int(row_lines[b - 1])}",
            )
