"""Reader of RealWorld (HAR) 2016 (Sztyler & Stuckenschmidt, University of Mannheim, PerCom 2016).

15 probands, 8 activities, smartphones/watch at 7 body positions, Android sensors at ~50 Hz.
We read the WAIST position's accelerometer and gyroscope.

Layout read (``realworld2016_dataset.zip`` unpacked once; the per-activity archives inside it
are read with zipfile, never unpacked)::

    <root>/proband<N>/data/acc_<activity>_csv.zip   members acc_<activity>_<position>.csv
    <root>/proband<N>/data/gyr_<activity>_csv.zip   members Gyroscope_<activity>_<position>.csv

(mag_, lig_, mic_, GPS_ archives and the other positions are not read.) Every CSV has the
header ``id,attr_time,attr_x,attr_y,attr_z``: a row counter, the time in ms since the Unix
epoch, and the three axes. Units: acc m/s^2 with gravity (Android), gyro rad/s; no conversion.

Sessions (known quirks of the published archives, all handled):
  - some activities were recorded in several sessions: members named
    ``acc_<activity>_<k>_waist.csv`` (e.g. proband4 walking, proband6/7 sitting, proband8
    standing, proband13 walking carry ``_2`` names);
  - for some probands (4, 7, 14: climbingup/climbingdown) the archive holds nested archives,
    one per session: ``acc_climbingup_1_csv.zip``... and ``gyr_climbingup_csv.zip`` (session 1,
    unnumbered), ``gyr_climbingup_2_csv.zip``...;
  - archives ``<sensor>_<activity>_<k>_csv.zip`` directly in data/ are accepted too.
  The session number is the first found of: top-level archive name, nested archive name,
  CSV name; none means session 1. Accelerometer and gyroscope sessions are paired by number;
  a leftover pair whose files are numbered differently is paired by time overlap (counted in
  ``report.repairs``); a session still without its partner (the dataset lacks that waist
  file) is dropped and counted in ``report.dropped``.

Clock alignment: accelerometer and gyroscope run on separate clocks with different sample
counts. Each stream is split where it has a gap longer than MAX_GAP_S (0.2 s; counted, never
interpolated across); over each stretch where both streams run, both are linearly
interpolated onto one uniform 50 Hz grid starting at the later of the two first samples.
Samples outside the overlap are dropped and counted. One Recording per continuous overlap
of one (proband, activity, session); subject = N; rate 50 Hz.
Rows out of time order are sorted (counted in repairs); repeated timestamps keep the first
row (the rest counted in dropped); a pair with no common time yields nothing (a note says so).

Labels (activity in the file name -> global activity): climbingdown downstairs, climbingup
upstairs, jumping, lying, running, sitting, standing, walking.

Errors (DataFormatError naming the file, ``archive.zip:member.csv`` inside archives, and the
line): a proband folder without data/, a missing acc or gyr archive of one of the 8
activities (the published dataset has both for every activity of every proband), an archive
that is not a zip, an unknown activity in an archive or member name, a header other than the
one above, rows with the wrong number of cells (truncated), non-numeric or non-finite cells.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
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

RATE_HZ = 50.0
MAX_GAP_S = 0.2
POSITION = "waist"
HEADER: tuple[str, ...] = ("id", "attr_time", "attr_x", "attr_y", "attr_z")
SENSORS = ("acc", "gyr")
#: the member-name prefix of each sensor's CSVs (gyr archives hold Gyroscope_*.csv)
MEMBER_PREFIXES = {"acc": ("acc",), "gyr": ("gyroscope", "gyr")}  # lower case
_PROBAND = re.compile(r"^proband(\d+)$")
_ARCHIVE = re.compile(r"^(?P<sensor>acc|gyr)_(?P<rest>.+)_csv\.zip$")
_MEMBER_CSV = re.compile(r"^(?P<prefix>[^_]+)_(?P<rest>.+)_(?P<position>[A-Za-z]+)\.csv$")
_SESSION = re.compile(r"^(?P<activity>.+?)(?:_(?P<part>\d+))?$")

# report keys (units in the text)
GAPS_KEY = f"sensor gaps > {MAX_GAP_S:g} s, recording split there (not interpolated), gaps"
PAIRED_BY_TIME_KEY = "acc/gyr sessions paired by time overlap (numbered differently), sessions"
UNSORTED_KEY = "files with rows out of time order, sorted by attr_time, files"
REPEATED_TIME_KEY = "samples with a repeated attr_time (first kept)"


def _split_session(rest: str) -> tuple[str, int | None]:
    """'climbingup_2' -> ('climbingup', 2); 'walking' -> ('walking', None)."""
    match = _SESSION.match(rest)
    if match is None:  # callers pass a non-empty `.+` group, which always matches
        raise ValueError(f"realworld: not an activity session name: {rest!r}")
    part = match.group("part")
    return match.group("activity"), (int(part) if part else None)


# --------------------------------------------------------------------------- parsing


def parse_sensor_csv(data: bytes, where: str) -> np.ndarray:
    """Rows of one ``id,attr_time,attr_x,attr_y,attr_z`` CSV as an (N, 5) float array.

    Fast pandas C-engine parse; when it fails or leaves holes, a line-by-line scan names
    the first bad line.
    """
    head = data[:512].decode("utf-8", errors="replace").lstrip("\ufeff")
    header = head.splitlines()[0] if head else ""
    if tuple(c.strip() for c in header.split(",")) != HEADER:
        raise DataFormatError(
            where, f"unexpected header {header!r}; expected {','.join(HEADER)!r}", line=1
        )
    try:
        frame = pd.read_csv(
            io.BytesIO(data), header=None, skiprows=1, dtype=np.float64, engine="c"
        )
    except pd.errors.EmptyDataError:
        return np.zeros((0, len(HEADER)))
    except (ValueError, OverflowError):  # ParserError is a ValueError
        _raise_first_bad_line(data, where)
    table = frame.to_numpy(dtype=np.float64)
    if table.shape[1] != len(HEADER) or not np.isfinite(table).all():
        _raise_first_bad_line(data, where)
    return table


def _raise_first_bad_line(data: bytes, where: str):
    raise_first_bad_line(data, where, HEADER)


@dataclass
class Stream:
    """One sensor's samples of one session: times in ms (increasing), values (N, 3)."""

    source: str
    t_ms: np.ndarray
    xyz: np.ndarray


def clean_clock(table: np.ndarray, source: str, report: PrepareReport) -> Stream:
    """Sort rows out of time order and drop repeated timestamps, counting both."""
    t = table[:, 1]
    xyz = table[:, 2:5]
    if len(t) > 1 and (np.diff(t) < 0).any():
        order = np.argsort(t, kind="stable")
        t, xyz = t[order], xyz[order]
        report.repairs[UNSORTED_KEY] += 1
    if len(t) > 1:
        keep = np.concatenate([[True], np.diff(t) > 0])
        if not keep.all():
            report.dropped[REPEATED_TIME_KEY] += int((~keep).sum())
            t, xyz = t[keep], xyz[keep]
    return Stream(source, t, xyz)


# --------------------------------------------------------------------------- clock alignment


def continuous_spans(t_ms: np.ndarray, max_gap_ms: float) -> list[tuple[int, int]]:
    """(start, stop) index ranges of ``t_ms`` without a step longer than ``max_gap_ms``."""
    if len(t_ms) == 0:
        return []
    breaks = np.flatnonzero(np.diff(t_ms) > max_gap_ms) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(t_ms)]])
    return list(zip(starts.tolist(), stops.tolist()))


def align(
    acc: Stream, gyr: Stream, report: PrepareReport, rate: float = RATE_HZ
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Both streams on one uniform grid over each stretch where both run.

    Returns [(grid times in ms, signal (T, 6))], one per continuous overlap; counts the
    gaps split at and the samples left outside every overlap.
    """
    step = 1000.0 / rate
    acc_spans = continuous_spans(acc.t_ms, 1000.0 * MAX_GAP_S)
    gyr_spans = continuous_spans(gyr.t_ms, 1000.0 * MAX_GAP_S)
    gaps = max(len(acc_spans) - 1, 0) + max(len(gyr_spans) - 1, 0)
    if gaps:
        report.dropped[GAPS_KEY] += gaps
    used_acc = np.zeros(len(acc.t_ms), bool)
    used_gyr = np.zeros(len(gyr.t_ms), bool)
    out = []
    i = j = 0
    while i < len(acc_spans) and j < len(gyr_spans):  # intersect two sorted span lists
        (a0, a1), (g0, g1) = acc_spans[i], gyr_spans[j]
        ta, tg = acc.t_ms[a0:a1], gyr.t_ms[g0:g1]
        lo, hi = max(ta[0], tg[0]), min(ta[-1], tg[-1])
        if hi - lo >= step:  # at least two grid points in common
            grid = lo + step * np.arange(int(math.floor((hi - lo) / step + 1e-9)) + 1)
            signal = np.empty((len(grid), 6))
            for axis in range(3):
                signal[:, axis] = np.interp(grid, ta, acc.xyz[a0:a1, axis])
                signal[:, 3 + axis] = np.interp(grid, tg, gyr.xyz[g0:g1, axis])
            used_acc[a0:a1] |= (ta >= lo) & (ta <= hi)
            used_gyr[g0:g1] |= (tg >= lo) & (tg <= hi)
            out.append((grid, signal))
        if ta[-1] <= tg[-1]:
            i += 1
        else:
            j += 1
    for sensor, used in (("accelerometer", used_acc), ("gyroscope", used_gyr)):
        if not used.all():
            report.dropped[f"{sensor} samples outside the acc/gyro overlap"] += int((~used).sum())
    return out


def _overlap_ms(a: Stream, b: Stream) -> float:
    if not len(a.t_ms) or not len(b.t_ms):
        return 0.0
    return min(a.t_ms[-1], b.t_ms[-1]) - max(a.t_ms[0], b.t_ms[0])


# --------------------------------------------------------------------------- reader


class RealWorldReader(Reader):
    name = "realworld"
    version = 1
    title = "RealWorld (HAR) 2016: 15 probands, 8 activities, waist smartphone, ~50 Hz"
    folder_names = ("realworld2016_dataset", "realworld", "RealWorld", "realworld2016")
    label_map = {
        "climbingdown": "downstairs",
        "climbingup": "upstairs",
        "jumping": "jumping",
        "lying": "lying",
        "running": "running",
        "sitting": "sitting",
        "standing": "standing",
        "walking": "walking",
    }
    channels_note = (
        "waist smartphone (Android): acc m/s^2 with gravity, gyro rad/s, no conversion; the "
        "two sensor clocks are interpolated onto one 50 Hz grid over their overlap"
    )

    # ---- layout

    def locate(self, data_dir: Path) -> Path | None:
        found = super().locate(data_dir)
        if found is not None:
            return found
        # an archive unpacked into a folder of its own name: realworld/realworld2016_dataset/
        for outer in self.folder_names:
            for inner in self.folder_names:
                root = Path(data_dir) / outer / inner
                if root.is_dir() and self.looks_like_root(root):
                    return root
        return None

    def looks_like_root(self, root: Path) -> bool:
        return any(
            d.is_dir() and _PROBAND.match(d.name) and (d / "data").is_dir()
            for d in Path(root).iterdir()
        )

    def probands(self, root: Path) -> list[tuple[int, Path]]:
        found = sorted(
            (int(m.group(1)), d)
            for d in Path(root).iterdir()
            if d.is_dir() and (m := _PROBAND.match(d.name))
        )
        if not found:
            raise DataFormatError(root, "no proband<N> folders")
        for _, d in found:
            if not (d / "data").is_dir():
                raise DataFormatError(d / "data", "folder is missing")
        return found

    def archives(self, data_dir: Path) -> dict[tuple[str, str], list[tuple[int | None, Path]]]:
        """(sensor, activity) -> [(session number in the archive name or None, path)]."""
        found: dict[tuple[str, str], list] = {}
        for f in sorted(data_dir.iterdir()):
            match = _ARCHIVE.match(f.name)
            if not (f.is_file() and match):
                continue  # other sensors (mag, lig, mic, GPS), videos, images
            activity, part = _split_session(match.group("rest"))
            if activity not in self.label_map:
                raise DataFormatError(
                    f, f"unknown activity {activity!r}; known: {', '.join(self.label_map)}"
                )
            found.setdefault((match.group("sensor"), activity), []).append((part, f))
        for activity in self.label_map:
            for sensor in SENSORS:
                if (sensor, activity) not in found:
                    raise DataFormatError(
                        data_dir / f"{sensor}_{activity}_csv.zip",
                        "file is missing (the published dataset has an acc and a gyr archive "
                        "for each of the 8 activities of every proband)",
                    )
        return found

    def source_files(self, root: Path) -> list[Path]:
        files: list[Path] = []
        for _, d in self.probands(root):
            for paths in self.archives(d / "data").values():
                files.extend(p for _, p in paths)
        return sorted(files)

    # ---- reading

    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording]:
        report.notes.append(
            f"realworld: position {POSITION} only; acc and gyro interpolated onto one "
            f"{RATE_HZ:g} Hz grid over their overlap, split at gaps > {MAX_GAP_S:g} s"
        )
        for subject, folder in self.probands(root):
            archives = self.archives(folder / "data")
            for activity, name in self.label_map.items():
                label = ACTIVITY_ID[name]
                acc = self._sessions(archives[("acc", activity)], "acc", activity, report)
                gyr = self._sessions(archives[("gyr", activity)], "gyr", activity, report)
                if not acc and not gyr:
                    report.dropped[f"activities without any {POSITION} file, activities"] += 1
                    report.notes.append(f"realworld: {folder.name} {activity}: no {POSITION} file")
                for acc_stream, gyr_stream in self._pair(acc, gyr, report):
                    parts = align(acc_stream, gyr_stream, report)
                    source = f"{acc_stream.source} + {gyr_stream.source}"
                    if not parts:
                        report.notes.append(f"realworld: {source}: no common time of both sensors")
                    for _, signal in parts:
                        yield Recording(
                            signal=signal,
                            labels=np.full(len(signal), label, dtype=np.int64),
                            rate=RATE_HZ,
                            subject=subject,
                            source=source,
                        )

    def _sessions(self, archives, sensor: str, activity: str, report) -> dict[int, Stream]:
        """Session number -> waist stream, from the archives of one (sensor, activity)."""
        sessions: dict[int, Stream] = {}
        for part, path in archives:
            try:
                with zipfile.ZipFile(path) as outer:
                    context = _Context(sensor, activity, sessions, report)
                    self._collect(outer, str(path), (part,), context)
            except zipfile.BadZipFile:
                raise DataFormatError(path, "not a readable zip archive") from None
        return sessions

    def _collect(self, archive: zipfile.ZipFile, where: str, parts: tuple, ctx: _Context):
        """Waist members of ``archive`` (recursing into nested archives) into ctx.sessions."""
        for member in archive.namelist():
            base = member.rsplit("/", 1)[-1]
            if member.startswith("__MACOSX/") or not base:
                continue
            source = f"{where}:{member}"
            nested = _ARCHIVE.match(base)
            if nested:
                inner_activity, part = _split_session(nested.group("rest"))
                self._check_member(nested.group("sensor"), inner_activity, ctx, source)
                try:
                    with zipfile.ZipFile(io.BytesIO(archive.read(member))) as inner:
                        self._collect(inner, source, (*parts, part), ctx)
                except zipfile.BadZipFile:
                    raise DataFormatError(source, "not a readable zip archive") from None
                continue
            match = _MEMBER_CSV.match(base)
            if not match or match.group("position").lower() != POSITION:
                continue  # other body positions are not read
            member_activity, part = _split_session(match.group("rest"))
            self._check_member(match.group("prefix").lower(), member_activity, ctx, source)
            session = next((p for p in (*parts, part) if p is not None), 1)
            if session in ctx.sessions:
                first = ctx.sessions[session].source
                raise DataFormatError(
                    source, f"a second {POSITION} file for session {session} (first: {first})"
                )
            table = parse_sensor_csv(archive.read(member), source)
            ctx.report.files_read += 1
            ctx.sessions[session] = clean_clock(table, source, ctx.report)

    def _check_member(self, prefix: str, member_activity: str, ctx: _Context, source: str):
        if member_activity != ctx.activity:
            what = "activity" if member_activity in self.label_map else "unknown activity"
            raise DataFormatError(
                source, f"names {what} {member_activity!r}, inside a {ctx.activity!r} archive"
            )
        if prefix not in MEMBER_PREFIXES[ctx.sensor]:
            raise DataFormatError(source, f"a {prefix!r} file inside a {ctx.sensor!r} archive")

    @staticmethod
    def _pair(accs: dict, gyrs: dict, report: PrepareReport) -> list[tuple[Stream, Stream]]:
        """(acc, gyr) session pairs: by session number, then leftovers by time overlap."""
        pairs = [(accs.pop(k), gyrs.pop(k)) for k in sorted(set(accs) & set(gyrs))]
        for k_acc in sorted(accs):
            best = max(gyrs, key=lambda k: _overlap_ms(accs[k_acc], gyrs[k]), default=None)
            if best is not None and _overlap_ms(accs[k_acc], gyrs[best]) > 0:
                pairs.append((accs.pop(k_acc), gyrs.pop(best)))
                report.repairs[PAIRED_BY_TIME_KEY] += 1
        for sensor, left in (("accelerometer", accs), ("gyroscope", gyrs)):
            for stream in left.values():
                report.dropped[f"{sensor} samples of {POSITION} files without a partner"] += len(
                    stream.t_ms
                )
                report.notes.append(f"realworld: {stream.source} has no partner file; dropped")
        return pairs


@dataclass
class _Context:
    """What one archive walk collects into."""

    sensor: str
    activity: str
    sessions: dict
    report: PrepareReport
