"""Reader of a folder dataset: your own recordings plus a ``manifest.csv``, no code.

Layout read::

    <folder>/manifest.csv          one row per recording (below)
    <folder>/<file>                 the recordings it lists (.csv, .npy or .npz; subfolders allowed)

``manifest.csv`` columns (header required, any order)::

    file       the recording, relative to the folder and inside it; listed once
    subject    an integer id (a subject may have many recordings), within 64 bits
    activity   the activity of the whole recording: a fedhar name (walking, sitting, ...; see
               fedhar.data.labels) or a new one, which joins the union label space. Normalised
               first (labels.normalise_activity): outer spaces stripped, lower case, spaces and
               '-' as '_', and the union's merges applied (jogging -> running, laying -> lying, ...)
    rate_hz    sampling rate in Hz, 10 to 2000 (resampled to 50 Hz by fedhar.data.harmonise)
    acc_unit   m/s^2 (also m/s2, m/s²) or g
    gyro_unit  rad/s, or deg/s (also dps)
    channels   optional: the six columns holding acc x y z, gyro x y z, space-separated: column
               names for a .csv, 0-based column numbers for a .npy / .npz. Empty or absent: a
               .csv has columns acc_x acc_y acc_z gyro_x gyro_y gyro_z, an array exactly 6 columns
    allow_rate optional: "yes" accepts a rate_hz outside 10-2000 Hz (a typo such as 10000 for
               100 is more likely than such a recording, so it is refused without this)

A .csv recording has a header row; columns it has beyond the six are not read. A .npy holds one
(samples x columns) array, a .npz exactly one such array. Settings shared by the whole folder
are repeated on every row.

The dataset is named after the folder (or ``NAME=FOLDER``) and registered like any reader
(fedhar.data.registry.register_folder); its activities join the label space in the order the
manifest first names them. Units are converted by ``harmonise.to_si``, resampling and windowing
are ``harmonise.harmonise``'s: the same code as every built-in reader. Recordings shorter than a
window are counted in the report's drops, as for every reader; a folder none of whose recordings
gives a window is an error (fedhar.data.loading).

Plausibility (a warning on stderr and in the report's notes, naming the recording): after unit
conversion the median |acc| should be near 9.8 m/s^2 (gravity included, as fedhar expects;
warned outside 5-20 m/s^2: a wrong acc_unit, gravity removed, gyro columns given as acc) and the
median |gyro| well under 5 rad/s (warned above: deg/s declared rad/s, acc columns given as gyro).
A .csv's numeric ``time`` (or ``timestamp``, ``t``) column is not read as the clock, but its
median step is checked: a warning when rate_hz is not within 10% of the rate it gives in any of
s, ms, us, ns (rate_hz is what is used; gaps in the clock are not split at).

Errors (DataFormatError): manifest.csv:<line> for a missing manifest, a missing or unknown
column, a wrong cell count, a missing or twice-listed file, an unknown file type, a subject that
is not an integer or does not fit 64 bits, an empty activity, a rate that is not a number > 0 or
outside 10-2000 Hz without allow_rate, an unknown unit, a bad channels cell (or one naming a
column twice), an absolute file or one outside the folder, a manifest that is not UTF-8;
<recording>[:<line>] for an unreadable file, a channel it lacks, the wrong number
of columns, a non-numeric or non-finite cell or array row, no samples.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedhar.data.harmonise import ACC_UNITS, GYRO_UNITS, to_si, warn
from fedhar.data.labels import ACTIVITY_ID, normalise_activity
from fedhar.data.readers.base import Reader
from fedhar.data.readers.csvscan import raise_first_bad_line
from fedhar.data.schema import CHANNELS, PrepareReport, Recording
from fedhar.errors import DataFormatError

MANIFEST = "manifest.csv"
REQUIRED = ("file", "subject", "activity", "rate_hz", "acc_unit", "gyro_unit")
COLUMNS = (*REQUIRED, "channels", "allow_rate")
SUFFIXES = (".csv", ".npy", ".npz")
RATE_RANGE_HZ = (10.0, 2000.0)  # native rates outside need allow_rate=yes
ACC_NORM_RANGE = (5.0, 20.0)  # m/s^2: the median |acc| of a recording with gravity is about 9.8
GYRO_NORM_MAX = 5.0  # rad/s: the median |gyro| of human motion is well below
INT64 = (-(2**63), 2**63 - 1)
TIME_COLUMNS = ("time", "timestamp", "t")  # a .csv column checked against rate_hz, when it holds numbers
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
RATE_TOLERANCE = 0.1


@dataclass(frozen=True)
class Entry:
    """One manifest row, checked."""

    line: int
    path: Path
    subject: int
    activity: str
    rate: float
    acc_unit: str
    gyro_unit: str
    channels: tuple[str, ...]  # () = the default (see the module docstring)
    native_activity: str = ""  # the activity cell as written (``activity`` is its normalised form)


def read_manifest(root: Path) -> list[Entry]:
    """Every row of ``root/manifest.csv``, checked; the first problem raises, naming its line."""
    manifest = Path(root) / MANIFEST
    if not manifest.is_file():
        raise DataFormatError(manifest, f"file is missing: a folder dataset lists its recordings in {MANIFEST} "
                                        f"(columns {', '.join(COLUMNS)})")
    data = manifest.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataFormatError(manifest, f"not UTF-8 text (byte 0x{data[e.start]:02x}): save it as UTF-8 "
                                        "(e.g. iconv -f latin1 -t utf-8)", line=line) from None
    with io.StringIO(text, newline="") as f:
        rows = csv.reader(f)
        header = [cell.strip() for cell in next(rows, [])]
        _check_header(manifest, header)
        entries: list[Entry] = []
        first_line: dict[Path, int] = {}
        for cells in rows:
            if not any(cell.strip() for cell in cells):
                continue
            entry = _entry(manifest, rows.line_num, header, cells)
            key = entry.path.resolve()
            if key in first_line:
                raise DataFormatError(manifest, f"{entry.path.relative_to(root)} is listed twice "
                                                f"(first on line {first_line[key]})", line=entry.line)
            first_line[key] = entry.line
            entries.append(entry)
    if not entries:
        raise DataFormatError(manifest, "lists no recordings")
    return entries


def _check_header(manifest: Path, header: list[str]) -> None:
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise DataFormatError(manifest, f"unknown column {unknown[0]!r} (columns: {', '.join(COLUMNS)})", line=1)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DataFormatError(manifest, f"missing column {', '.join(map(repr, missing))} "
                                        f"(columns: {', '.join(COLUMNS)}; channels is optional)", line=1)
    twice = [c for c in header if header.count(c) > 1]
    if twice:
        raise DataFormatError(manifest, f"column {twice[0]!r} appears twice", line=1)


def _entry(manifest: Path, line: int, header: list[str], cells: list[str]) -> Entry:
    def bad(message: str) -> DataFormatError:
        return DataFormatError(manifest, message, line=line)

    if len(cells) != len(header):
        raise bad(f"expected {len(header)} comma-separated cells ({', '.join(header)}), found {len(cells)}")
    row = {name: cell.strip() for name, cell in zip(header, cells)}
    if not row["file"]:
        raise bad("empty file cell")
    if Path(row["file"]).is_absolute():
        raise bad(f"{row['file']}: an absolute path; a recording is given relative to the dataset folder "
                  f"{manifest.parent} and lies inside it")
    if Path(os.path.normpath(row["file"])).parts[:1] == ("..",):
        raise bad(f"{row['file']}: leaves the dataset folder {manifest.parent}; a folder dataset's recordings lie "
                  "inside its folder (move the file in, or link it there)")
    path = manifest.parent / row["file"]
    if path.suffix.lower() not in SUFFIXES:
        raise bad(f"{row['file']}: unknown file type (a recording is one of {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise bad(f"{row['file']}: file is missing (no {path})")
    try:
        subject = int(row["subject"])
    except ValueError:
        raise bad(f"subject {row['subject']!r} is not an integer") from None
    if not INT64[0] <= subject <= INT64[1]:
        raise bad(f"subject {row['subject']} does not fit 64 bits ({INT64[0]}..{INT64[1]})")
    activity = normalise_activity(row["activity"])
    if not activity:
        raise bad("empty activity cell")
    try:
        rate = float(row["rate_hz"])
    except ValueError:
        raise bad(f"rate_hz {row['rate_hz']!r} is not a number") from None
    if not (math.isfinite(rate) and rate > 0):
        raise bad(f"rate_hz must be > 0 Hz, got {row['rate_hz']}")
    allow_rate = row.get("allow_rate", "").lower()
    if allow_rate not in ("", "yes"):
        raise bad(f"allow_rate is 'yes' or empty, got {row['allow_rate']!r}")
    low, high = RATE_RANGE_HZ
    if not low <= rate <= high and not allow_rate:
        raise bad(f"rate_hz {row['rate_hz']} is outside {low:g}-{high:g} Hz: if the recording really is at "
                  f"{rate:g} Hz, add a column allow_rate with 'yes' on this row")
    for column, known in (("acc_unit", ACC_UNITS), ("gyro_unit", GYRO_UNITS)):
        if row[column] not in known:
            raise bad(f"unknown {column} {row[column]!r} (known: {', '.join(known)})")
    channels = tuple(row.get("channels", "").split())
    if channels and len(channels) != len(CHANNELS):
        raise bad(f"channels names {len(channels)} columns; give 6: acc x y z, gyro x y z, space-separated")
    array = path.suffix.lower() != ".csv"
    if channels and array and not all(c.isdigit() for c in channels):
        raise bad(f"channels of an array file are 0-based column numbers, got {' '.join(channels)!r}")
    keys = [str(int(c)) for c in channels] if array else list(channels)  # "01" and "1": one column
    twice = next((i for i, k in enumerate(keys) if keys.count(k) > 1), None)
    if twice is not None:
        raise bad(f"channels names column {channels[twice]!r} {keys.count(keys[twice])} times; "
                  "each of acc x y z, gyro x y z needs its own column")
    return Entry(line, path, subject, activity, rate, row["acc_unit"], row["gyro_unit"], channels, row["activity"])


def check_plausible(entry: Entry, signal: np.ndarray, report: PrepareReport) -> None:
    """Warn (naming the recording) when its magnitudes in SI units do not look like acc with
    gravity and gyro of human motion: a wrong unit, gravity removed, channels in the wrong order."""
    acc = float(np.median(np.linalg.norm(signal[:, :3], axis=1)))
    gyro = float(np.median(np.linalg.norm(signal[:, 3:], axis=1)))
    low, high = ACC_NORM_RANGE
    if not low <= acc <= high:
        warn(report, f"{entry.path}: median |acc| is {acc:.3g} m/s^2 after conversion from {entry.acc_unit} "
                     f"(with gravity about 9.8; warned outside {low:g}-{high:g}): check acc_unit and the order of "
                     f"channels in {MANIFEST}:{entry.line}; fedhar expects gravity included")
    if gyro > GYRO_NORM_MAX:
        warn(report, f"{entry.path}: median |gyro| is {gyro:.3g} rad/s after conversion from {entry.gyro_unit} "
                     f"(human motion: well under {GYRO_NORM_MAX:g}): check gyro_unit and the order of channels in "
                     f"{MANIFEST}:{entry.line}")


def load_signal(entry: Entry, report: PrepareReport | None = None) -> np.ndarray:
    """The recording's six channels (acc x y z, gyro x y z) in its manifest units, (T, 6) float64;
    with ``report``, a .csv's numeric time column is checked against rate_hz (``check_declared_rate``)."""
    if entry.path.suffix.lower() == ".csv":
        values, times = _csv_channels(entry)
        if times is not None and report is not None:
            check_declared_rate(entry, *times, report)
    else:
        values = _array_channels(entry)
    if len(values) == 0:
        raise DataFormatError(entry.path, "no samples")
    return values


def check_declared_rate(entry: Entry, column: str, times: np.ndarray, report: PrepareReport) -> None:
    """Warn when the median step of a recording's time column gives a rate within 10% of rate_hz
    in none of the units s, ms, us, ns: rate_hz is then most likely wrong (it is what is used)."""
    steps = np.diff(times)
    steps = steps[steps > 0]
    if len(steps) < 10:
        return
    step = float(np.median(steps))
    rates = {unit: 1 / (step * seconds) for unit, seconds in TIME_UNITS.items()}
    if any(abs(rate - entry.rate) <= RATE_TOLERANCE * entry.rate for rate in rates.values()):
        return
    given = ", ".join(f"{rate:.4g} Hz in {unit}" for unit, rate in rates.items())
    warn(report, f"{entry.path}: its {column} column steps by {step:.4g} (median): {given}; none is within "
                 f"{RATE_TOLERANCE:.0%} of rate_hz {entry.rate:g} ({MANIFEST}:{entry.line}), which is the rate used")


def _csv_channels(entry: Entry) -> tuple[np.ndarray, tuple[str, np.ndarray] | None]:
    """The six channels, and (name, values) of a time column holding numbers, if there is one."""
    where = str(entry.path)
    data = entry.path.read_bytes()
    wanted = entry.channels or CHANNELS
    try:
        with warnings.catch_warnings():
            # with index_col=False pandas only warns when the first row has extra cells
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # every column as text, then the six as numbers: other columns (a timestamp, ...) may hold anything
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        raise DataFormatError(where, "empty file (a recording needs a header row and samples)") from None
    except (ValueError, pd.errors.ParserWarning):  # ParserError (a ValueError): a row with extra cells
        raise_first_bad_line(data, where, _header(data), numeric=wanted)
    header = tuple(c.strip() for c in frame.columns)
    frame.columns = header
    missing = [c for c in wanted if c not in header]
    if missing:
        how = f"the channels of {MANIFEST}:{entry.line}" if entry.channels else "fedhar's default channel names"
        raise DataFormatError(where, f"no column {missing[0]!r} ({how}); columns: {', '.join(header)}", line=1)
    try:
        values = frame[list(wanted)].astype(np.float64).to_numpy()
    except ValueError:
        values = None
    if values is None or not np.isfinite(values).all():
        raise_first_bad_line(data, where, header, numeric=wanted)
    column = next((c for c in TIME_COLUMNS if c in header and c not in wanted), None)
    if column is None:
        return values, None
    times = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
    return values, ((column, times) if np.isfinite(times).all() else None)  # (date-time text: not checked)


def _header(data: bytes) -> tuple[str, ...]:
    first = data.decode("utf-8", errors="replace").lstrip("\ufeff").split("\n", 1)[0]
    return tuple(cell.strip() for cell in first.rstrip("\r").split(","))


def _array_channels(entry: Entry) -> np.ndarray:
    path = entry.path
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises many types for damaged or foreign files
        raise DataFormatError(path, f"not a readable {path.suffix} file ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if len(loaded.files) != 1:
                raise DataFormatError(path, f"holds {len(loaded.files)} arrays ({', '.join(loaded.files)}); "
                                            "a recording .npz holds exactly one (samples x columns)")
            loaded = loaded[loaded.files[0]]
    if loaded.ndim != 2 or loaded.dtype.kind not in "fiu":
        raise DataFormatError(path, f"holds a {loaded.dtype} array of shape {loaded.shape}; "
                                    "expected numbers, samples x columns")
    columns = [int(c) for c in entry.channels] if entry.channels else list(range(len(CHANNELS)))
    if (not entry.channels and loaded.shape[1] != len(CHANNELS)) or max(columns) >= loaded.shape[1]:
        how = f"the channels of {MANIFEST}:{entry.line} name columns {' '.join(entry.channels)}" if entry.channels \
            else f"without a channels cell in {MANIFEST}:{entry.line} it must have exactly 6"
        raise DataFormatError(path, f"has {loaded.shape[1]} columns; {how}")
    values = loaded[:, columns].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad):
        raise DataFormatError(path, f"row {bad[0] + 1} holds a non-finite value (NaN or inf)")
    return values


class FolderReader(Reader):
    """A folder dataset; ``folder_reader`` makes the subclass bound to one folder."""

    root: Path
    version = 1
    folder_names = ()

    def locate(self, data_dir: Path) -> Path | None:
        return self.root  # its own folder, wherever the data dirs are

    def looks_like_root(self, root: Path) -> bool:
        return (Path(root) / MANIFEST).is_file()

    def source_files(self, root: Path) -> list[Path]:
        return [Path(root) / MANIFEST, *(e.path for e in read_manifest(root))]

    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording]:
        entries = read_manifest(root)
        subjects = {e.subject for e in entries}
        report.notes.append(f"{self.name}: {len(entries)} recordings of {len(subjects)} subjects listed in "
                            f"{Path(root) / MANIFEST}, one activity per recording")
        for entry in entries:
            if entry.activity not in ACTIVITY_ID:  # the manifest changed after the dataset was registered
                raise DataFormatError(root / MANIFEST, f"activity {entry.activity!r} was added after {self.name!r} "
                                                       "was registered: start again", line=entry.line)
            signal = to_si(load_signal(entry, report), entry.acc_unit, entry.gyro_unit)
            check_plausible(entry, signal, report)
            report.files_read += 1
            labels = np.full(len(signal), ACTIVITY_ID[entry.activity], np.int64)
            yield Recording(signal, labels, entry.rate, entry.subject, str(entry.path))


_CLASSES: dict[tuple[str, Path], type[FolderReader]] = {}


def folder_reader(name: str, root: Path) -> type[FolderReader]:
    """The reader class of folder ``root`` under dataset ``name`` (one class per pair, so
    registering the same folder again is a no-op); reads the manifest to list its activities."""
    root = Path(root).expanduser().resolve()
    if (name, root) in _CLASSES:
        return _CLASSES[name, root]
    entries = read_manifest(root)
    native = {e.native_activity: e.activity for e in entries}  # as written -> the union's name
    units = sorted({f"{e.rate:g} Hz, acc {e.acc_unit}, gyro {e.gyro_unit}" for e in entries})
    attrs = {
        "name": name,
        "root": root,
        "title": f"a folder dataset: the recordings listed in {root / MANIFEST}",
        "label_map": native,
        "channels_note": f"from {MANIFEST}: {'; '.join(units)}; converted to m/s^2 and rad/s",
    }
    _CLASSES[name, root] = type(f"FolderReader_{name}", (FolderReader,), attrs)
    return _CLASSES[name, root]
