"""Reader of MotionSense (Malekzadeh, Clegg, Cavallaro, Haddadi; Queen Mary University of London).

24 subjects, an iPhone 6s in the trousers' front pocket, 6 activities in 15 trials, Core
Motion "device motion" recorded with SensingKit at 50 Hz (github.com/mmalekzadeh/motion-sense).

Layout read (the published ``A_DeviceMotion_data.zip``, unpacked)::

    <root>/A_DeviceMotion_data/<act>_<trial>/sub_<n>.csv

Unpacking the Kaggle copy gives a doubled folder ``A_DeviceMotion_data/A_DeviceMotion_data/``;
both are accepted, as is a root that is the ``A_DeviceMotion_data`` folder itself. Trials:
dws 1,2,11; ups 3,4,12; sit 5,13; std 6,14; wlk 7,8,15; jog 9,16 (1-9 long, 11-16 short);
the trial number is not used. Each CSV (written by pandas, so the first column is the unnamed
row index) has the header line::

    ,attitude.roll,attitude.pitch,attitude.yaw,gravity.x,gravity.y,gravity.z,
    rotationRate.x,rotationRate.y,rotationRate.z,userAcceleration.x,userAcceleration.y,
    userAcceleration.z

Units and conversions:
    gravity, userAcceleration  in g; the accelerometer (gravity included) is their sum.
    Sign: Core Motion reports acceleration with the opposite sign to Android: an iPhone lying
    face up reads gravity.z = -1 g, an Android phone +9.81 m/s^2 (same device axes: x right,
    y to the top, z out of the screen). Every other dataset here is Android, so we flip:
        acc = -(gravity + userAcceleration) * 9.80665      [m/s^2, Android convention]
    rotationRate  rad/s, right-hand rule about the same axes on both systems: used as is.
    attitude  (roll/pitch/yaw) is not read.
One Recording per file, subject = n (1-24), rate 50 Hz.

Labels (folder prefix -> global activity): dws downstairs, ups upstairs, sit sitting,
std standing, wlk walking, jog running (jogging merged into running, fedhar.data.labels).

Errors (DataFormatError naming file and line): no activity folders, an unknown activity
prefix (names the folder), a CSV name other than sub_<n>.csv, a header other than the one
above, rows with the wrong number of cells (truncated), non-numeric or non-finite cells.
A file with a header and no rows is skipped and counted in ``report.dropped``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fedhar.data.labels import ACTIVITY_ID
from fedhar.data.readers.base import Reader
from fedhar.data.readers.csvscan import raise_first_bad_line
from fedhar.data.schema import STANDARD_GRAVITY, PrepareReport, Recording
from fedhar.errors import DataFormatError

RATE_HZ = 50.0
MOTION_DIR = "A_DeviceMotion_data"
COLUMNS: tuple[str, ...] = (
    "attitude.roll",
    "attitude.pitch",
    "attitude.yaw",
    "gravity.x",
    "gravity.y",
    "gravity.z",
    "rotationRate.x",
    "rotationRate.y",
    "rotationRate.z",
    "userAcceleration.x",
    "userAcceleration.y",
    "userAcceleration.z",
)
_N_FIELDS = 1 + len(COLUMNS)  # the unnamed row index first
_GRAVITY = [1 + COLUMNS.index(f"gravity.{a}") for a in "xyz"]
_USER_ACC = [1 + COLUMNS.index(f"userAcceleration.{a}") for a in "xyz"]
_ROTATION = [1 + COLUMNS.index(f"rotationRate.{a}") for a in "xyz"]
_TRIAL_DIR = re.compile(r"^([A-Za-z]+)_(\d+)$")
_SUBJECT_FILE = re.compile(r"^sub_(\d+)\.csv$")
SIGN_NOTE = (
    "motionsense: accelerometer = -(gravity + userAcceleration) x 9.80665 m/s^2; Core Motion's "
    "sign is flipped to the Android convention of the other datasets (face up: +9.81 on z)"
)


# --------------------------------------------------------------------------- parsing


def parse_device_motion_csv(data: bytes, where: str) -> np.ndarray:
    """Rows of one DeviceMotion CSV as an (N, 13) float array (index column first).

    Fast pandas C-engine parse; when it fails or leaves holes, a line-by-line scan names
    the first bad line.
    """
    text_head = data[:4096].decode("utf-8", errors="replace").lstrip("\ufeff")
    header = text_head.splitlines()[0] if text_head else ""
    names = [c.strip() for c in header.split(",")]
    if tuple(names[1:]) != COLUMNS:
        raise DataFormatError(
            where, f"unexpected header {header!r}; expected ',{','.join(COLUMNS)}'", line=1
        )
    try:
        frame = pd.read_csv(
            io.BytesIO(data), header=None, skiprows=1, dtype=np.float64, engine="c"
        )
    except pd.errors.EmptyDataError:
        return np.zeros((0, _N_FIELDS))
    except (ValueError, OverflowError):  # ParserError is a ValueError
        _raise_first_bad_line(data, where)
    table = frame.to_numpy(dtype=np.float64)
    if table.shape[1] != _N_FIELDS or not np.isfinite(table).all():
        _raise_first_bad_line(data, where)
    return table


def _raise_first_bad_line(data: bytes, where: str):
    raise_first_bad_line(data, where, ("index", *COLUMNS))


def to_canonical(table: np.ndarray) -> np.ndarray:
    """(N, 13) DeviceMotion rows -> (N, 6) acc [m/s^2, Android sign] + gyro [rad/s]."""
    acc = -(table[:, _GRAVITY] + table[:, _USER_ACC]) * STANDARD_GRAVITY
    return np.column_stack([acc, table[:, _ROTATION]])


# --------------------------------------------------------------------------- reader


class MotionSenseReader(Reader):
    name = "motionsense"
    version = 1
    title = "MotionSense: iPhone 6s in the front pocket, 24 subjects, 6 activities, 50 Hz"
    folder_names = ("motionsense", "motion-sense", "MotionSense", MOTION_DIR)
    label_map = {
        "dws": "downstairs",
        "ups": "upstairs",
        "sit": "sitting",
        "std": "standing",
        "wlk": "walking",
        "jog": "running",
    }
    channels_note = (
        "iPhone 6s, trousers' front pocket; acc = -(gravity + userAcceleration) x 9.80665 "
        "m/s^2 (Core Motion's sign flipped to Android's), gyro = rotationRate rad/s; 50 Hz"
    )

    def motion_dir(self, root: Path) -> Path | None:
        """The folder holding the <act>_<trial> folders (single or doubled unpack)."""
        root = Path(root)
        for candidate in (root / MOTION_DIR / MOTION_DIR, root / MOTION_DIR, root):
            if candidate.is_dir() and any(
                d.is_dir() and _TRIAL_DIR.match(d.name) for d in candidate.iterdir()
            ):
                return candidate
        return None

    def looks_like_root(self, root: Path) -> bool:
        return self.motion_dir(root) is not None

    def _trial_dirs(self, root: Path) -> list[tuple[Path, str]]:
        motion = self.motion_dir(root)
        if motion is None:
            raise DataFormatError(
                Path(root) / MOTION_DIR, "folder is missing or holds no <act>_<trial> folders"
            )
        found = []
        for d in motion.iterdir():
            match = _TRIAL_DIR.match(d.name)
            if not (d.is_dir() and match):
                continue
            prefix = match.group(1)
            if prefix not in self.label_map:
                raise DataFormatError(
                    d, f"unknown activity prefix {prefix!r}; known: {', '.join(self.label_map)}"
                )
            found.append((int(match.group(2)), prefix, d))
        return [(d, prefix) for _, prefix, d in sorted(found)]

    def _subject_files(self, trial_dir: Path) -> list[tuple[int, Path]]:
        files = []
        for f in trial_dir.iterdir():
            if f.suffix.lower() != ".csv":
                continue  # e.g. .DS_Store
            match = _SUBJECT_FILE.match(f.name)
            if not match:
                raise DataFormatError(f, "expected a file named sub_<n>.csv")
            files.append((int(match.group(1)), f))
        return sorted(files)

    def source_files(self, root: Path) -> list[Path]:
        return [f for d, _ in self._trial_dirs(root) for _, f in self._subject_files(d)]

    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording]:
        report.notes.append(SIGN_NOTE)
        for trial_dir, prefix in self._trial_dirs(root):
            label = ACTIVITY_ID[self.label_map[prefix]]
            for subject, path in self._subject_files(trial_dir):
                table = parse_device_motion_csv(path.read_bytes(), str(path))
                report.files_read += 1
                if len(table) == 0:
                    report.dropped["files with a header but no rows, files"] += 1
                    report.notes.append(f"motionsense: {path} has no rows; skipped")
                    continue
                yield Recording(
                    signal=to_canonical(table),
                    labels=np.full(len(table), label, dtype=np.int64),
                    rate=RATE_HZ,
                    subject=subject,
                    source=str(path),
                )
