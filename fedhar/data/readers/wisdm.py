"""Reader of WISDM (phone, merged subset): WISDM Smartphone and Smartwatch Activity and
Biometrics Dataset.

Gary M. Weiss, UCI Machine Learning Repository, dataset 507, 2019 (CC BY 4.0). 51 subjects
(ids 1600-1650) each did 18 activities for about 3 minutes with a phone (Nexus 5/5X,
Galaxy S6) in the trouser pocket. Read here: a public, already merged subset of the phone
recordings with 4 activities (A walking, B jogging, C stairs, M kicking), 804,649 rows.

Layout read::

    <root>/phone/data_<subject>_merged.csv     one file per subject, 1600..1650
    <root>/activity_key.txt, README.txt        (not read: the authors' description of
                                                the full dataset and its 18 letters)

Each file has one header line and comma-separated rows::

    Subject-Id,Activity Label,Time stamp,Accel_x,Accel_y,Accel_z,Gyro_x,Gyro_y,Gyro_z
    1600,A,252207666810782,-0.36476135,8.793503,1.0550842,-0.85321045,0.29722595,0.8901825

timestamps in nanoseconds (a per-device clock, not Unix time), accelerometer in m/s^2 with
gravity (median norm about 9.79), gyroscope in rad/s: already the canonical units.

Clocks. The nominal 20 Hz is not what the timestamps say: phones logged at about 20 Hz
(steps of 50.35 or 50.0 ms), 25 Hz (39.9 ms, jittered: consecutive steps anti-correlate,
lag-1 r about -0.4, so the samples lie on a regular grid with a jittered time stamp) or
50 Hz (20.1 or 19.7 ms), and some recordings change rate or stop for a while. A *run* is
the contiguous rows of one activity in a subject's file; each run is cut into *segments*:
- at a non-increasing time stamp (none in the real data);
- at a gap, a step longer than ``GAP_STEPS`` x the local step (below);
- where the rate changes: every step is classed by the rolling median (``ROLL_STEPS``
  steps) of the mean step over ``SPAN_STEPS`` steps around it (time stamp jitter cancels
  in a span) to the nearest of ``CLOCKS_HZ`` within ``CLOCK_TOLERANCE``;
  steps whose level matches none (e.g. the 2.5 ms bursts at the start of 1650's jogging)
  are cut out and their rows dropped, counted; a piece takes the clock of its own mean
  step (a few rows at the edge of a rate change may differ from their steps' class).
A segment's rate is its mean measured rate, (rows - 1) / (last - first time): 27 distinct
rates (to 0.01 Hz) in the real data, 19.82 to 50.56 Hz. Its rows are taken as uniformly
spaced at that rate (the 25 Hz jitter is in the time stamps, not the samples) and
fedhar.data.harmonise resamples them to 50 Hz with its anti-aliasing polyphase filter.
Segments shorter than ``MIN_SEGMENT_S`` (one default window) are dropped and counted.

Accelerometer / gyroscope alignment. The merged file has one time stamp per row (the
accelerometer's): the two streams were joined row by row by whoever made the subset, so
the gyroscope's own clock is lost. What the rows allow checking is the gait both sensors
see. In all 66 walking and jogging runs logged at 20 or 25 Hz only, the magnitudes of the
two sensors are coherent (magnitude-squared coherence peak 0.64-1.00 in 0.5-6 Hz, with a
constant lag over the run): one clock, no drift. In the 30 logged at 50 Hz only they are
not (peak <= 0.14 in 29 of them, 0.52 in 1626's jogging). In subject 1608's 50 Hz walking
run the gyroscope's gait peak is at 2.5 x the accelerometer's (5.0 vs 2.0 Hz) for about
its first 3,600 rows, then at 7.1 Hz (2.5 x 1608's jogging cadence of 2.8 Hz): a 20 Hz
gyroscope of walking, then of jogging, joined row by row to a 50 Hz accelerometer, so the
gyroscope of those rows belongs to other times and activities. Hence ``DROP_CLOCKS_HZ``:
segments on the 50 Hz clock are dropped and counted (1626's jogging included, for one
rule). This removes every row of the 14 subjects who logged at 50 Hz only (1608, 1614,
1627, 1628, 1633, 1635, 1641-1646, 1648, 1650; their files are still read and checked):
37 subjects keep windows. ``tests/test_reader_wisdm.py`` recomputes the coherences from
the real data.

Duplicates. Subject 1629's file holds its four runs twice: the second copy (14,264 rows)
repeats the first's accelerometer values and time stamps with a different gyroscope
(both copies coherent). Rows repeating an earlier row's activity and time stamp are
dropped (the first copy is kept) and counted.

Labels (``LABEL_MAP``): A walking, B jogging -> running (the union's merge, as
MotionSense's jogging), C stairs -> stairs and M kicking -> kicking, both appended to the
union label space (fedhar.data.labels): WISDM does not say whether the stairs went up or
down, so they are not merged into upstairs/downstairs, and no other dataset has kicking.
WISDM's own 4-class task is kept. Another of the 18 letters is an error (this subset has
only these four).

Orientation. The phone sat in the pocket in different ways: the dominant gravity axis of a
run (the axis of the largest |mean| acceleration) is -y in 89 of the 173 runs, +y in 51,
+x in 23, -x in 10, and it changes between the runs of 16 subjects (``report.notes`` gives
both). No axis is rotated or aligned, as in every other reader: a gravity alignment would
fix one axis but leave the heading about it unknown, so frames would still differ; the
orientation changes between runs of one subject, so no per-subject rotation fits; and
orientation invariance, if wanted, is a matter for the model or its augmentation. The
sensor frame is kept, and orientation stays a real difference between clients.

Errors (DataFormatError naming the file, and the line where there is one): a header other
than the one above (a missing or renamed column), a row with the wrong number of cells, a
blank line between rows, a non-integer subject or time stamp, a non-numeric or non-finite
(nan, inf) sensor value, a subject other than the file name's, an activity letter other
than A, B, C, M, a file without data rows, a file name other than
``data_<subject>_merged.csv`` in phone/, two files of one subject.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedhar.data.labels import ACTIVITY_ID
from fedhar.data.readers.base import Reader
from fedhar.data.readers.csvscan import raise_first_bad_line
from fedhar.data.schema import PrepareReport, Recording
from fedhar.errors import DataFormatError

HEADER: tuple[str, ...] = (
    "Subject-Id", "Activity Label", "Time stamp",
    "Accel_x", "Accel_y", "Accel_z", "Gyro_x", "Gyro_y", "Gyro_z",
)
SENSORS = HEADER[3:]
PHONE_DIR = "phone"
_SUBJECT_FILE = re.compile(r"^data_(\d+)_merged\.csv$")

LABEL_MAP: dict[str, str] = {
    "A": "walking",
    "B": "running",  # jogging
    "C": "stairs",  # up and down not told apart
    "M": "kicking",  # a soccer ball
}

CLOCKS_HZ = (20.0, 25.0, 50.0)  # the phones' logging rates seen in the timestamps
CLOCK_TOLERANCE = 0.10  # a step level within 10% of a clock's step belongs to it
ROLL_STEPS = 15  # steps in the rolling median that classes a step
SPAN_STEPS = 5  # ... of mean steps over this many steps
GAP_STEPS = 3.0  # a step longer than 3 local steps (step_levels) is a gap
MIN_SEGMENT_S = 128 / 50.0  # shorter segments cannot hold one default window
DROP_CLOCKS_HZ = (50.0,)  # gyroscope not on the accelerometer's clock (module docstring)
NS = 1e9

DROP_DUPLICATE = "rows repeating an earlier row's activity and time stamp (1629's second copy), rows"
DROP_UNCLOCKED = "rows at no recognised rate (time stamp bursts), rows"
DROP_SHORT = f"rows of clock segments shorter than {MIN_SEGMENT_S:g} s (one window), rows"
DROP_50HZ = "rows logged at 50 Hz (gyroscope not on the accelerometer's clock), rows"
CUT_GAP = f"segments cut at clock gaps > {GAP_STEPS:g} steps, gaps"
CUT_RATE = "segments cut where the rate changes, changes"
CUT_BACKWARDS = "segments cut at non-increasing time stamps, cuts"


@dataclass(frozen=True)
class SubjectTable:
    """One subject's file, parsed and checked."""

    path: Path
    subject: int
    labels: np.ndarray  # (N,) activity letters
    time_ns: np.ndarray  # (N,) int64
    values: np.ndarray  # (N, 6) acc x, y, z [m/s^2], gyro x, y, z [rad/s]
    lines: np.ndarray  # (N,) the line of each row in the file


@dataclass(frozen=True)
class Segment:
    """Rows start..stop-1 of a table: one activity on one clock, no gap."""

    start: int
    stop: int
    clock_hz: float
    rate_hz: float  # measured: (rows - 1) / duration

    @property
    def rows(self) -> int:
        return self.stop - self.start


def find_subject_files(root: Path) -> dict[int, Path]:
    """Subject -> its file under ``root/phone``, checking the names."""
    folder = Path(root) / PHONE_DIR
    if not folder.is_dir():
        raise DataFormatError(folder, "folder of the per-subject phone files is missing")
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        m = _SUBJECT_FILE.match(path.name)
        if not m or not path.is_file():
            raise DataFormatError(path, f"unexpected name in {PHONE_DIR}/: it holds only data_<subject>_merged.csv")
        subject = int(m.group(1))
        if subject in found:
            raise DataFormatError(path, f"a second file for subject {subject} (first: {found[subject].name})")
        found[subject] = path
    if not found:
        raise DataFormatError(folder, "no data_<subject>_merged.csv files")
    return dict(sorted(found.items()))


def read_subject_file(path: Path, subject: int) -> SubjectTable:
    """Parse one file (pandas C engine); on any problem a line-by-line scan names the line."""
    data = Path(path).read_bytes()
    header = data[:512].decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()[:1]
    if not header or tuple(c.strip() for c in header[0].split(",")) != HEADER:
        got = header[0] if header else ""
        raise DataFormatError(path, f"unexpected header {got!r}; expected {','.join(HEADER)!r}", line=1)
    lf = data.replace(b"\r\n", b"\n")
    blank = lf.rstrip(b"\n").find(b"\n\n")
    if blank >= 0:  # pandas would skip it and shift every later line number
        raise DataFormatError(path, "blank line between data lines", line=lf[:blank].count(b"\n") + 2)
    dtypes = {HEADER[0]: np.int64, HEADER[1]: str, HEADER[2]: np.int64, **dict.fromkeys(SENSORS, np.float64)}
    try:
        frame = pd.read_csv(io.BytesIO(data), header=None, skiprows=1, names=list(HEADER), dtype=dtypes,
                            engine="c", keep_default_na=False, na_values={c: ["", "nan", "NaN"] for c in SENSORS})
    except pd.errors.EmptyDataError:
        raise DataFormatError(path, "no data rows after the header") from None
    except (ValueError, OverflowError):  # ParserError and bad casts are ValueErrors
        _raise_first_bad_line(data, path)
    if len(frame) == 0:
        raise DataFormatError(path, "no data rows after the header")
    values = frame[list(SENSORS)].to_numpy(np.float64)
    if not np.isfinite(values).all() or frame.isna().any().any():
        _raise_first_bad_line(data, path)
    labels = frame[HEADER[1]].to_numpy(str)
    unknown = ~np.isin(labels, list(LABEL_MAP))
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataFormatError(path, f"unknown activity {str(labels[row])!r} (known: {', '.join(LABEL_MAP)})", line=row + 2)
    subjects = frame[HEADER[0]].to_numpy(np.int64)
    other = subjects != subject
    if other.any():
        row = int(np.flatnonzero(other)[0])
        raise DataFormatError(path, f"subject {subjects[row]} in the file of subject {subject}", line=row + 2)
    lines = np.arange(2, len(frame) + 2)
    return SubjectTable(Path(path), subject, labels, frame[HEADER[2]].to_numpy(np.int64), values, lines)


def drop_duplicates(table: SubjectTable, report: PrepareReport) -> SubjectTable:
    """The table without rows repeating an earlier row's activity and time stamp (counted)."""
    duplicate = pd.DataFrame({"a": table.labels, "t": table.time_ns}).duplicated().to_numpy()
    report.dropped[DROP_DUPLICATE] += int(duplicate.sum())
    if not duplicate.any():
        return table
    keep = ~duplicate
    return SubjectTable(table.path, table.subject, table.labels[keep], table.time_ns[keep], table.values[keep],
                        table.lines[keep])


def _raise_first_bad_line(data: bytes, path: Path):
    # pandas accepts a row with too few cells (filled with NaN): the scan names it
    raise_first_bad_line(data, str(path), HEADER, numeric=(HEADER[0], *HEADER[2:]), integers=HEADER[:1] + HEADER[2:3])


def label_runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each maximal run of one activity letter."""
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    return list(zip(np.r_[0, change].tolist(), np.r_[change, len(labels)].tolist()))


def step_levels(time_ns: np.ndarray) -> np.ndarray:
    """The local step (ns) around each step (row k to k + 1): the rolling median
    (ROLL_STEPS) of the mean step over SPAN_STEPS steps. Time stamp jitter cancels in a span
    (it telescopes); a gap or a step back moves few of the medianed spans."""
    steps = len(time_ns) - 1
    span = min(SPAN_STEPS, steps)
    mean_step = (time_ns[span:] - time_ns[:-span]) / span  # over steps j .. j + span - 1
    before = (span - 1) // 2
    mean_step = np.pad(mean_step.astype(np.float64), (before, steps - len(mean_step) - before), mode="edge")
    window = min(ROLL_STEPS, steps)
    level = pd.Series(mean_step).rolling(window, center=True, min_periods=window).median()
    return level.bfill().ffill().to_numpy()  # the ends take the nearest full window's level


def step_clocks(level: np.ndarray) -> np.ndarray:
    """The index into CLOCKS_HZ of each step level, -1 where none is within CLOCK_TOLERANCE."""
    nominal = NS / np.asarray(CLOCKS_HZ)
    with np.errstate(invalid="ignore", divide="ignore"):  # a level <= 0 (time going back) matches no clock
        distance = np.abs(np.log(level[:, None] / nominal[None, :]))
    distance = np.nan_to_num(distance, nan=np.inf)
    return np.where(distance.min(axis=1) <= np.log1p(CLOCK_TOLERANCE), distance.argmin(axis=1), -1)


def clock_segments(time_ns: np.ndarray, report: PrepareReport) -> list[Segment]:
    """One run's rows cut at non-increasing time, gaps, steps at no clock and rate changes
    (module docstring). A cut step leaves its two rows to the pieces on either side; rows
    of a piece without a step (no rate can be measured) are dropped and counted."""
    n = len(time_ns)
    if n < 2:
        report.dropped[DROP_UNCLOCKED] += n
        return []
    steps = np.diff(time_ns)
    level = step_levels(time_ns)
    clocks = step_clocks(level)
    backwards = steps <= 0
    gap = ~backwards & (steps > GAP_STEPS * np.maximum(level, 1.0))
    change = np.r_[False, clocks[1:] != clocks[:-1]]
    edges = np.flatnonzero(backwards | gap | change | (clocks < 0)) + 1  # cut step k: row k | row k + 1
    report.repairs[CUT_BACKWARDS] += int(backwards.sum())
    report.repairs[CUT_GAP] += int(gap.sum())
    segments: list[Segment] = []
    for start, stop in zip(np.r_[0, edges].tolist(), np.r_[edges, n].tolist()):
        if stop - start < 2 or clocks[start] < 0:
            report.dropped[DROP_UNCLOCKED] += stop - start
            continue
        mean_step = (time_ns[stop - 1] - time_ns[start]) / (stop - start - 1)
        (clock,) = step_clocks(np.array([mean_step]))  # a piece at a rate edge can differ from its steps' class
        if clock < 0:
            report.dropped[DROP_UNCLOCKED] += stop - start
            continue
        segment = Segment(start, stop, CLOCKS_HZ[int(clock)], NS / mean_step)
        if segments and segments[-1].clock_hz != segment.clock_hz:
            report.repairs[CUT_RATE] += 1
        segments.append(segment)
    return segments


def gravity_axis(acc: np.ndarray) -> str:
    """The axis, with its sign, on which the mean acceleration is largest: '+x' ... '-z'."""
    mean = acc.mean(axis=0)
    k = int(np.abs(mean).argmax())
    return ("+" if mean[k] > 0 else "-") + "xyz"[k]


class WisdmReader(Reader):
    name = "wisdm"
    title = "WISDM (UCI 507) phone, merged subset: trouser pocket, 51 subjects, 4 activities, 20/25/50 Hz"
    folder_names = ("wisdm", "WISDM", "wisdm-dataset")
    label_map = LABEL_MAP
    channels_note = (
        "phone in the trouser pocket (Nexus 5/5X, Galaxy S6); accelerometer in m/s^2 (gravity included), "
        "gyroscope in rad/s, as published; per-segment rate from the time stamps, 50 Hz segments dropped "
        "(gyroscope off the accelerometer's clock); sensor axes as published: orientation differs "
        "between subjects, not rotated"
    )

    def looks_like_root(self, root: Path) -> bool:
        return any((Path(root) / PHONE_DIR).glob("data_*_merged.csv"))

    def source_files(self, root: Path) -> list[Path]:
        return list(find_subject_files(root).values())

    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording]:
        files = find_subject_files(root)
        yield from self.read_tables((read_subject_file(path, subject) for subject, path in files.items()), report)

    def read_tables(self, tables, report: PrepareReport) -> Iterator[Recording]:
        """The recordings of parsed subject files (``read_subject_file``), in order."""
        rates: Counter = Counter()
        axes: Counter = Counter()
        changing: list[str] = []
        rows = files = 0
        for table in tables:
            report.files_read += 1
            files += 1
            rows += len(table.labels)
            table = drop_duplicates(table, report)
            run_axes = []
            for start, stop in label_runs(table.labels):
                run_axes.append(gravity_axis(table.values[start:stop, :3]))
                for seg in clock_segments(table.time_ns[start:stop], report):
                    rates[round(seg.rate_hz, 2)] += 1
                    if seg.clock_hz in DROP_CLOCKS_HZ:
                        report.dropped[DROP_50HZ] += seg.rows
                    elif seg.rows / seg.rate_hz < MIN_SEGMENT_S:
                        report.dropped[DROP_SHORT] += seg.rows
                    else:
                        yield self.recording(table, Segment(start + seg.start, start + seg.stop, seg.clock_hz, seg.rate_hz))
            axes.update(run_axes)
            if len(set(run_axes)) > 1:
                changing.append(f"{table.subject} ({' '.join(run_axes)})")
        report.notes.append(
            f"wisdm: {files} subject files, {rows} rows; activities A walking, B jogging -> running, "
            "C stairs, M kicking; no axis rotated"
        )
        listed = ", ".join(f"{r:g}" for r in sorted(rates))
        report.notes.append(f"wisdm: {sum(rates.values())} clock segments at {len(rates)} measured rates (Hz): {listed}")
        report.notes.append(
            "wisdm: dominant gravity axis of the runs: "
            + ", ".join(f"{a} {n}" for a, n in sorted(axes.items()))
            + f"; it changes between runs for {len(changing)} subjects: {'; '.join(changing)}"
        )

    def recording(self, table: SubjectTable, segment: Segment) -> Recording:
        rows = slice(segment.start, segment.stop)
        activity = ACTIVITY_ID[LABEL_MAP[str(table.labels[segment.start])]]
        labels = np.full(segment.rows, activity, np.int64)
        lines = f"lines {table.lines[segment.start]}-{table.lines[segment.stop - 1]}"
        return Recording(table.values[rows].copy(), labels, segment.rate_hz, table.subject, f"{table.path} ({lines})")
