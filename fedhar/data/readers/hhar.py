"""Reader of HHAR, the Heterogeneity Human Activity Recognition dataset (Stisen et al.,
SenSys 2015; UCI id 344, "Activity recognition exp").

9 users (a..i) carried 8 phones (2 each of LG Nexus 4, Samsung Galaxy S3, S3 mini and
Galaxy S+, device names ``nexus4_1``, ``s3_2``, ``s3mini_1``, ``samsungold_2``...) around the
waist while biking, sitting, standing, walking and taking the stairs; each phone logged its
accelerometer and gyroscope "at the highest frequency the device allows".

Layout read (the published ``Activity recognition exp.zip``, unpacked)::

    <root>/Phones_accelerometer.csv
    <root>/Phones_gyroscope.csv

``<root>`` is the ``Activity recognition exp`` folder. ``Watch_accelerometer.csv`` and
``Watch_gyroscope.csv`` beside them are not read (phones only; a note says so). Both phone
files have one header line and comma-separated rows (dataset README, UCI)::

    Index,Arrival_Time,Creation_Time,x,y,z,User,Model,Device,gt
    0,1424696633908,1424696631913248572,-5.958191,0.6880646,8.135345,a,nexus4,nexus4_1,stand

    Index          row number (not used)
    Arrival_Time   when the sample reached the logging app: Unix epoch, milliseconds
    Creation_Time  the timestamp the OS attached to the sample (Android SensorEvent
                   clock), nanoseconds; its base is device specific: Unix epoch on the
                   Nexus 4 (19 digits), time since boot on the Samsung phones (13-15
                   digits, e.g. 92263852409000 on samsungold_2)
    x, y, z        Android sensor axes: accelerometer in m/s^2 with gravity,
                   gyroscope in rad/s; used as published (already canonical units)
    User           a..i      Model  nexus4, s3, s3mini, samsungold      Device  model_1/2
    gt             bike, sit, stand, walk, stairsup, stairsdown, null

Subjects: user letter -> 1..9 (a=1, b=2, ... i=9), ``USER_SUBJECT``.

Labels (gt -> global activity): bike cycling, sit sitting, stand standing, walk walking,
stairsup upstairs, stairsdown downstairs; null (no activity) is dropped and counted.

Clock alignment. The accelerometer and gyroscope rows of a phone are separate, unaligned
streams at device-dependent rates (about 200 Hz Nexus 4, 150 Hz S3, 100 Hz S3 mini, 50 Hz
Galaxy S+). They are aligned on Creation_Time, the sensor-event clock both sensors of a
phone share, as the DeepSense HHAR pipeline pairs them (github.com/yscacaca/
HHAR-Data-Process, pairDataFile.py): Arrival_Time has millisecond resolution and carries
delivery latency and batching (several samples arrive in the same millisecond). Because
Creation_Time's base differs between devices and restarts when a phone reboots,
Arrival_Time is used only as a coarse wall clock, per (user, device, sensor) stream:

1. rows are ordered by Arrival_Time; where Creation_Time jumps against it by more than
   ``CLOCK_RESET_S`` a new clock session starts (counted in ``report.repairs``);
2. each session's offset, median(Arrival - Creation), places it on the wall clock; the
   gyroscope is put on the accelerometer's clock (same offset) when their offsets agree
   within ``SHARED_CLOCK_S`` (10 s), the normal case, so their relative timing is the
   exact Creation_Time one; otherwise it keeps its own offset (re-based, counted);
3. rows are ordered by that time; rows repeating a timestamp (a known quirk) are removed,
   keeping the first, and counted in ``report.repairs``;
4. each sensor is cut into stretches at gaps longer than ``MAX_GAP_S`` and at label
   changes; null stretches are dropped; where an accelerometer and a gyroscope stretch
   with the same label overlap for at least ``MIN_STRETCH_S``, both are interpolated
   linearly onto one uniform grid over the overlap, at the stream's nominal rate: the
   smallest of ``NOMINAL_RATES`` at least 0.9 x the measured (median) rate of the faster
   sensor, so neither sensor is decimated without a filter here. fedhar.data.harmonise
   then resamples to 50 Hz with an anti-aliasing filter.

Each overlap becomes one Recording with a single label (the gt of both sensors' samples,
which agree there). Rows outside such overlaps (gaps, sensor without the other, labels
disagreeing at activity changes, stretches < ``MIN_STRETCH_S``) are counted in
``report.dropped``, as are streams without gyroscope data.

Errors (DataFormatError naming file and line): a missing phone file, a header other than
the one above, rows with the wrong number of cells (truncated), non-integer timestamps,
non-numeric or non-finite x/y/z, empty User/Device/gt cells, a User outside a..i and a gt
outside the label table.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedhar.data.labels import ACTIVITY_ID
from fedhar.data.readers.base import Reader
from fedhar.data.schema import PrepareReport, Recording
from fedhar.errors import DataFormatError

HEADER = "Index,Arrival_Time,Creation_Time,x,y,z,User,Model,Device,gt"
HEADER_FIELDS: tuple[str, ...] = tuple(HEADER.split(","))
ACC_FILE = "Phones_accelerometer.csv"
GYRO_FILE = "Phones_gyroscope.csv"
WATCH_FILES = ("Watch_accelerometer.csv", "Watch_gyroscope.csv")
USER_SUBJECT: dict[str, int] = {u: i + 1 for i, u in enumerate("abcdefghi")}

MAX_GAP_S = 0.2  # longer gaps in either sensor split a stream
MIN_STRETCH_S = 1.0  # shorter common stretches are dropped (counted)
CLOCK_RESET_S = 30.0  # Creation_Time jumping this much against Arrival_Time: new clock
# acc and gyro session offsets closer than this share one clock: delivery latencies differ by
# far less, a different clock base (epoch vs boot time, or boot vs awake time) by far more
SHARED_CLOCK_S = 10.0
NOMINAL_RATES: tuple[float, ...] = (25.0, 50.0, 100.0, 150.0, 200.0, 250.0, 400.0, 500.0)

_NS = 1_000_000_000
_NULL = -2  # label code of rows labelled null (dropped on purpose)
_DTYPES = {
    "Index": np.int64,
    "Arrival_Time": np.int64,
    "Creation_Time": np.int64,
    "x": np.float64,
    "y": np.float64,
    "z": np.float64,
    "User": "category",
    "Model": "category",
    "Device": "category",
    "gt": "category",
}

LABEL_MAP: dict[str, str | None] = {
    "bike": "cycling",
    "sit": "sitting",
    "stand": "standing",
    "walk": "walking",
    "stairsup": "upstairs",
    "stairsdown": "downstairs",
    "null": None,
}


# --------------------------------------------------------------------------- parsing


@dataclass
class PhoneTable:
    """The rows of one Phones_*.csv file, in file order."""

    path: Path
    arrival_ms: np.ndarray  # (N,) int64
    creation_ns: np.ndarray  # (N,) int64
    xyz: np.ndarray  # (N, 3) float64
    user: pd.Categorical  # (N,) user letters
    device: pd.Categorical  # (N,) device names
    label: np.ndarray  # (N,) int64 global activity id, _NULL for null

    def __len__(self) -> int:
        return len(self.arrival_ms)


def read_phone_csv(path: Path) -> PhoneTable:
    """Parse one Phones_*.csv (pandas C engine); DataFormatError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(
            path, f"file is missing; the published layout has {ACC_FILE} and {GYRO_FILE}"
        )
    with path.open("rb") as f:
        header = f.readline().decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    if header != HEADER:
        raise DataFormatError(path, f"unexpected header {header!r}; expected {HEADER!r}", line=1)
    try:
        with warnings.catch_warnings():
            # with index_col=False pandas only warns when the first row has extra cells
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path,
                engine="c",
                dtype=_DTYPES,  # every column: usecols would hide rows with extra cells
                index_col=False,
                keep_default_na=False,  # "null" is a label here, not a missing value
                na_values=[""],
                skip_blank_lines=False,  # keeps row i on line i + 2
            )
    except (ValueError, OverflowError, pd.errors.ParserWarning) as exc:  # ParserError: ValueError
        _raise_first_bad_line(path, str(exc))
    xyz = frame[["x", "y", "z"]].to_numpy(dtype=np.float64)
    empty = frame[["User", "Model", "Device", "gt"]].isna().to_numpy().any()
    if empty or not np.isfinite(xyz).all():
        _raise_first_bad_line(path, "empty or non-finite cells")

    user = frame["User"]
    _check_categories(path, user, USER_SUBJECT, "User", "users are a..i")
    gt = frame["gt"]
    _check_categories(path, gt, LABEL_MAP, "gt", f"known: {', '.join(LABEL_MAP)}")
    gt_ids = np.array(
        [_NULL if (name := LABEL_MAP[c]) is None else ACTIVITY_ID[name] for c in gt.cat.categories],
        dtype=np.int64,
    )
    return PhoneTable(
        path=path,
        arrival_ms=frame["Arrival_Time"].to_numpy(np.int64),
        creation_ns=frame["Creation_Time"].to_numpy(np.int64),
        xyz=xyz,
        user=user.array,
        device=frame["Device"].array,
        label=gt_ids[gt.cat.codes.to_numpy()],
    )


def _check_categories(path: Path, column: pd.Series, known, name: str, hint: str) -> None:
    for category in column.cat.categories:
        if category not in known:
            row = int(np.flatnonzero(column.to_numpy(dtype=object) == category)[0])
            raise DataFormatError(path, f"unknown {name} {category!r} ({hint})", line=row + 2)


def _raise_first_bad_line(path: Path, why: str):
    """Scan line by line for the first malformed row (only after a fast parse failed)."""
    n = len(HEADER_FIELDS)
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        next(f, None)  # header, checked already
        for lineno, line in enumerate(f, start=2):
            cells = line.rstrip("\r\n").split(",")
            if len(cells) != n:
                hint = " (truncated row?)" if len(cells) < n else ""
                raise DataFormatError(
                    path, f"expected {n} comma-separated cells, found {len(cells)}{hint}",
                    line=lineno,
                )
            for i in (0, 1, 2):
                try:
                    int(cells[i])
                except ValueError:
                    raise DataFormatError(
                        path, f"not an integer in column {HEADER_FIELDS[i]}: {cells[i]!r}",
                        line=lineno,
                    ) from None
            for i in (3, 4, 5):
                try:
                    value = float(cells[i])
                except ValueError:
                    value = None
                if value is None or not math.isfinite(value):
                    raise DataFormatError(
                        path, f"not a finite number in column {HEADER_FIELDS[i]}: {cells[i]!r}",
                        line=lineno,
                    )
            for i in (6, 7, 8, 9):
                if not cells[i]:
                    raise DataFormatError(path, f"empty {HEADER_FIELDS[i]} cell", line=lineno)
    raise DataFormatError(path, f"could not be parsed ({why}); no single bad line found")


# --------------------------------------------------------------------------- clocks


@dataclass
class SensorStream:
    """One sensor of one (user, device), on a common time axis, sorted, unique times."""

    time_ns: np.ndarray  # (n,) int64
    xyz: np.ndarray  # (n, 3)
    label: np.ndarray  # (n,) int64


@dataclass
class _Sessions:
    """Clock sessions of one sensor file: rows ordered by (stream, Arrival_Time)."""

    order: np.ndarray  # row indices into the table, in (stream, arrival, creation) order
    bounds: np.ndarray  # (S + 1,) session boundaries into ``order``
    stream: np.ndarray  # (S,) stream key of each session
    offset_ns: np.ndarray  # (S,) median(Arrival - Creation) of each session
    first_ns: np.ndarray  # (S,) earliest Creation_Time of each session
    last_ns: np.ndarray  # (S,) latest Creation_Time of each session
    resets: int  # sessions started by a clock reset inside a stream


def _stream_keys(table: PhoneTable, streams: dict[tuple[str, str], int]) -> np.ndarray:
    """A stream key per row: one per (user, device), shared by both files via ``streams``."""
    users, devices = table.user.categories, table.device.categories
    pair = table.user.codes.astype(np.int64) * len(devices) + table.device.codes
    uniques, inverse = np.unique(pair, return_inverse=True)
    lookup = np.array(
        [
            streams.setdefault((users[p // len(devices)], devices[p % len(devices)]), len(streams))
            for p in uniques
        ],
        dtype=np.int64,
    )
    return lookup[inverse]


def _clock_sessions(table: PhoneTable, keys: np.ndarray) -> _Sessions:
    order = np.lexsort((table.creation_ns, table.arrival_ms, keys))
    key = keys[order]
    creation = table.creation_ns[order]
    arrival_ns = table.arrival_ms[order] * 1_000_000
    jump = np.abs(np.diff(creation) - np.diff(arrival_ns))
    new_stream = np.diff(key) != 0
    reset = (jump > CLOCK_RESET_S * _NS) & ~new_stream
    starts = np.concatenate([[0], np.flatnonzero(new_stream | reset) + 1]) if len(key) else np.zeros(0, np.int64)
    bounds = np.concatenate([starts, [len(key)]]).astype(np.int64)
    lag = arrival_ns - creation
    n = len(bounds) - 1
    offset, first, last = (np.zeros(n, np.int64) for _ in range(3))
    for s in range(n):
        a, b = bounds[s], bounds[s + 1]
        offset[s] = int(np.median(lag[a:b]))
        first[s], last[s] = creation[a:b].min(), creation[a:b].max()
    return _Sessions(order, bounds, key[bounds[:-1]], offset, first, last, int(reset.sum()))


def _gyro_shifts(acc: _Sessions, gyro: _Sessions) -> tuple[np.ndarray, int]:
    """Offset of each gyroscope session: the accelerometer's where the clocks agree."""
    shifts = gyro.offset_ns.copy()
    rebased = 0
    for s in range(len(shifts)):
        same = np.flatnonzero(acc.stream == gyro.stream[s])
        if not len(same):
            continue
        lo, hi = gyro.first_ns[s] + gyro.offset_ns[s], gyro.last_ns[s] + gyro.offset_ns[s]
        overlap = np.minimum(hi, acc.last_ns[same] + acc.offset_ns[same]) - np.maximum(
            lo, acc.first_ns[same] + acc.offset_ns[same]
        )
        match = same[int(np.argmax(overlap))]
        if abs(int(gyro.offset_ns[s]) - int(acc.offset_ns[match])) < SHARED_CLOCK_S * _NS:
            shifts[s] = acc.offset_ns[match]
        elif overlap.max() > 0:
            rebased += 1
    return shifts, rebased


def _streams_on_wall_clock(
    table: PhoneTable, keys: np.ndarray, sessions: _Sessions, shifts: np.ndarray
) -> tuple[dict[int, SensorStream], int]:
    """Per stream key: rows on the common time axis, sorted, duplicate times removed."""
    order = sessions.order
    session_of_row = np.repeat(np.arange(len(shifts)), np.diff(sessions.bounds))
    time_ns = table.creation_ns[order] + shifts[session_of_row]
    key = keys[order]
    resort = np.lexsort((time_ns, key))  # stable: the first of equal times is kept
    order, time_ns, key = order[resort], time_ns[resort], key[resort]
    duplicate = np.concatenate([[False], (np.diff(time_ns) == 0) & (np.diff(key) == 0)])
    keep = ~duplicate
    order, time_ns, key = order[keep], time_ns[keep], key[keep]
    out = {}
    bounds = np.flatnonzero(np.diff(key)) + 1
    for part_order, part_time in zip(np.split(order, bounds), np.split(time_ns, bounds)):
        if len(part_order):
            out[int(keys[part_order[0]])] = SensorStream(
                part_time, table.xyz[part_order], table.label[part_order]
            )
    return out, int(duplicate.sum())


# --------------------------------------------------------------------------- stretches


def measured_rate(stream: SensorStream) -> float | None:
    """Median sampling rate over steps no longer than MAX_GAP_S (None if too few)."""
    steps = np.diff(stream.time_ns)
    steps = steps[(steps > 0) & (steps <= MAX_GAP_S * _NS)]
    return _NS / float(np.median(steps)) if len(steps) else None


def nominal_rate(measured: float) -> float:
    """The smallest clean rate >= 0.9 x the measured one (device rates drift around it)."""
    for rate in NOMINAL_RATES:
        if rate >= 0.9 * measured:
            return rate
    return NOMINAL_RATES[-1]


def label_stretches(stream: SensorStream) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(start, stop, label) row ranges with one label and no gap > MAX_GAP_S; null ones left
    out. Also returns the number of gaps that split a stretch of one (non-null) label."""
    t, label = stream.time_ns, stream.label
    if len(t) == 0:
        return (np.zeros(0, np.int64),) * 3 + (0,)
    gap = np.diff(t) > MAX_GAP_S * _NS
    change = np.diff(label) != 0
    cut = np.flatnonzero(gap | change) + 1
    starts = np.concatenate([[0], cut])
    stops = np.concatenate([cut, [len(t)]])
    labels = label[starts]
    gap_splits = int((gap & ~change & (label[:-1] != _NULL)).sum())
    keep = labels != _NULL
    return starts[keep], stops[keep], labels[keep], gap_splits


def common_stretches(acc: SensorStream, gyro: SensorStream):
    """(gap splits, [(t0_ns, t1_ns, label, acc rows, gyro rows), ...]): the overlaps of
    same-label stretches of both sensors lasting at least MIN_STRETCH_S, in time order."""
    a_start, a_stop, a_label, a_gaps = label_stretches(acc)
    g_start, g_stop, g_label, g_gaps = label_stretches(gyro)
    out = []
    i = j = 0
    while i < len(a_start) and j < len(g_start):
        a0, a1 = acc.time_ns[a_start[i]], acc.time_ns[a_stop[i] - 1]
        g0, g1 = gyro.time_ns[g_start[j]], gyro.time_ns[g_stop[j] - 1]
        t0, t1 = max(a0, g0), min(a1, g1)
        if a_label[i] == g_label[j] and t1 - t0 >= MIN_STRETCH_S * _NS:
            acc_rows = slice(int(a_start[i]), int(a_stop[i]))
            gyro_rows = slice(int(g_start[j]), int(g_stop[j]))
            out.append((int(t0), int(t1), int(a_label[i]), acc_rows, gyro_rows))
        if a1 <= g1:
            i += 1
        else:
            j += 1
    return a_gaps + g_gaps, out


def interpolate_onto_grid(stream: SensorStream, rows: slice, grid_ns_rel: np.ndarray, t0: int):
    """Linear interpolation of a stretch's x, y, z at t0 + grid (ns, relative)."""
    t = (stream.time_ns[rows] - t0).astype(np.float64)
    values = stream.xyz[rows]
    return np.column_stack([np.interp(grid_ns_rel, t, values[:, c]) for c in range(3)])


def rows_within(time_ns: np.ndarray, t0: int, t1: int) -> int:
    return int(np.searchsorted(time_ns, t1, "right") - np.searchsorted(time_ns, t0, "left"))


# --------------------------------------------------------------------------- reader


def align_streams(acc_table: PhoneTable, gyro_table: PhoneTable, report: PrepareReport):
    """Both files as per-(user, device) SensorStreams on one time axis per stream.

    Returns ({(user, device): key}, {key: acc stream}, {key: gyro stream}).
    """
    streams: dict[tuple[str, str], int] = {}
    acc_keys = _stream_keys(acc_table, streams)
    gyro_keys = _stream_keys(gyro_table, streams)
    acc_sessions = _clock_sessions(acc_table, acc_keys)
    gyro_sessions = _clock_sessions(gyro_table, gyro_keys)
    gyro_shift, rebased = _gyro_shifts(acc_sessions, gyro_sessions)
    resets = acc_sessions.resets + gyro_sessions.resets
    if resets:
        report.repairs["Creation_Time clock resets (jumps against Arrival_Time), splits"] += resets
    if rebased:
        report.repairs[
            "gyroscope clock sessions aligned through Arrival_Time (Creation_Time base differs "
            "from the accelerometer's), sessions"
        ] += rebased
    acc, acc_dups = _streams_on_wall_clock(
        acc_table, acc_keys, acc_sessions, acc_sessions.offset_ns
    )
    gyro, gyro_dups = _streams_on_wall_clock(gyro_table, gyro_keys, gyro_sessions, gyro_shift)
    if acc_dups + gyro_dups:
        report.repairs["rows repeating a timestamp removed (first kept), rows"] += (
            acc_dups + gyro_dups
        )
    return streams, acc, gyro


def stream_recordings(
    acc: SensorStream, gyro: SensorStream, subject: int, source: str, report: PrepareReport
) -> tuple[float, list[Recording]]:
    """One stream's common stretches, interpolated onto one grid at its nominal rate."""
    null_rows = int((acc.label == _NULL).sum() + (gyro.label == _NULL).sum())
    if null_rows:
        report.dropped["rows labelled null (no activity), rows"] += null_rows
    labelled = len(acc.label) + len(gyro.label) - null_rows
    measured = [r for r in (measured_rate(acc), measured_rate(gyro)) if r is not None]
    rate = nominal_rate(max(measured)) if measured else NOMINAL_RATES[0]
    gap_splits, stretches = common_stretches(acc, gyro)
    if gap_splits:
        report.repairs[f"stretches split at sensor gaps > {MAX_GAP_S} s, splits"] += gap_splits
    recordings, used = [], 0
    for t0, t1, label, acc_rows, gyro_rows in stretches:
        n = int(math.floor((t1 - t0) * rate / _NS + 1e-9)) + 1
        grid = np.arange(n, dtype=np.float64) * (_NS / rate)
        signal = np.column_stack(
            [
                interpolate_onto_grid(acc, acc_rows, grid, t0),
                interpolate_onto_grid(gyro, gyro_rows, grid, t0),
            ]
        )
        used += rows_within(acc.time_ns, t0, t1) + rows_within(gyro.time_ns, t0, t1)
        recordings.append(
            Recording(signal, np.full(n, label, dtype=np.int64), rate, subject, source)
        )
    if labelled - used:
        report.dropped[
            "rows outside common accelerometer+gyroscope stretches (gaps, no overlap, labels "
            f"disagree, or shorter than {MIN_STRETCH_S:g} s), rows"
        ] += labelled - used
    return rate, recordings


class HharReader(Reader):
    name = "hhar"
    version = 1
    title = "HHAR: 8 smartphones of 4 models at the waist, 9 users, 6 activities, 50-200 Hz"
    folder_names = ("Activity recognition exp", "hhar/Activity recognition exp", "hhar")
    label_map = LABEL_MAP
    channels_note = (
        "phones (Nexus 4, Galaxy S3, S3 mini, S+) at the waist; Android accelerometer m/s^2 "
        "with gravity and gyroscope rad/s as published; acc and gyro aligned on Creation_Time "
        "and interpolated linearly onto one grid at the device's nominal rate (50-200 Hz)"
    )

    def looks_like_root(self, root: Path) -> bool:
        return (Path(root) / ACC_FILE).is_file()

    def source_files(self, root: Path) -> list[Path]:
        return [Path(root) / ACC_FILE, Path(root) / GYRO_FILE]

    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording]:
        for path in self.source_files(root):  # both present before the long parse
            if not path.is_file():
                raise DataFormatError(
                    path, f"file is missing; the published layout has {ACC_FILE} and {GYRO_FILE}"
                )
        acc_path, gyro_path = self.source_files(root)
        acc_table = read_phone_csv(acc_path)
        report.files_read += 1
        gyro_table = read_phone_csv(gyro_path)
        report.files_read += 1
        report.notes.append(f"hhar: phones only; {' and '.join(WATCH_FILES)} are not read")
        report.notes.append(
            "hhar: accelerometer and gyroscope aligned on Creation_Time (the sensor-event clock "
            "of the phone); Arrival_Time only detects clock resets and places sessions; "
            f"stretches cut at gaps > {MAX_GAP_S:g} s and label changes, interpolated linearly"
        )
        streams, acc_streams, gyro_streams = align_streams(acc_table, gyro_table, report)
        del acc_table, gyro_table
        rates: dict[str, set] = defaultdict(set)
        missing = []
        for (user, device), key in sorted(streams.items()):
            acc, gyro = acc_streams.get(key), gyro_streams.get(key)
            if acc is None or gyro is None:
                has, lacks = "accelerometer", "gyroscope"
                if acc is None:
                    has, lacks = lacks, has
                missing.append(f"{user}/{device} (no {lacks})")
                report.dropped[f"{has} rows of user/device streams without {lacks} rows, rows"] += (
                    len((acc if gyro is None else gyro).label)
                )
                continue
            source = f"{acc_path} + {gyro_path} (user {user}, device {device})"
            rate, recordings = stream_recordings(acc, gyro, USER_SUBJECT[user], source, report)
            rates[device].add(rate)
            yield from recordings
        if missing:
            report.notes.append(f"hhar: streams dropped: {', '.join(missing)}")
        if rates:
            listed = ", ".join(
                f"{d} {'/'.join(f'{r:g}' for r in sorted(rs))} Hz"
                for d, rs in sorted(rates.items())
            )
            report.notes.append(f"hhar: grid rates by device: {listed}")
