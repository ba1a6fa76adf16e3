"""Reader of USC-HAD, the USC Human Activity Dataset.

Mi Zhang and Alexander A. Sawchuk, "USC-HAD: A Daily Activity Dataset for Ubiquitous
Activity Recognition Using Wearable Sensors", ACM UbiComp Workshop on Situation, Activity
and Goal Awareness (SAGAware), 2012. 14 subjects wore a MotionNode IMU on the front right
hip and did 12 activities, 5 trials each: 840 trials, 2,811,490 samples at 100 Hz.

Layout read (the published ``USC-HAD.zip``, unpacked; its ``Readme.txt``)::

    <root>/Subject<N>/a<m>t<n>.mat   N = subject 1..14, m = activity 1..12, n = trial 1..5
    <root>/Readme.txt, displayData_acc.m, displayData_gyro.m   (not read)

Each .mat file (MATLAB 5, read with scipy.io.loadmat) is one trial of one activity, with
text fields title, version, date, subject, age, height, weight, activity, activity_number,
trial, sensor_location, sensor_orientation, and ``sensor_readings``: one row per 100 Hz
sample, columns acc_x, acc_y, acc_z in g (+-6 g, gravity included) and gyro_x, gyro_y,
gyro_z in degrees per second (+-500 dps).

Units: acc [g] x STANDARD_GRAVITY (9.80665) -> m/s^2; gyro [dps] x pi/180 -> rad/s. One
Recording per trial at the native 100 Hz (harmonise resamples to 50 Hz); subject = N.

Axes (field sensor_orientation, "x-gravity-y-walking-direction-z-vertical-to-walking-
direction"): x is vertical (gravity, about +1 g standing), y the walking direction, z
perpendicular to both. This is the MotionNode's frame on the hip, NOT a phone's: no
rotation is applied, so a model sees other axes here than on HAPT/UCI-HAR's waist phone.

Labels: the file name's activity number; all 12 activities stay distinct, so USC-HAD's own
12-class task is preserved (nothing is merged away or dropped)::

    1 Walking Forward   -> walking          7 Jumping Up      -> jumping
    2 Walking Left      -> walking_left     8 Sitting         -> sitting
    3 Walking Right     -> walking_right    9 Standing        -> standing
    4 Walking Upstairs  -> upstairs        10 Sleeping        -> lying (on a bed)
    5 Walking Downstairs-> downstairs      11 Elevator Up     -> elevator_up
    6 Running Forward   -> running         12 Elevator Down   -> elevator_down

Walking left/right are walks turning left/right (gyro_x, the rate of turn about the
vertical, is positive/negative on average in every one of the 140 real trials); elevator
up/down are rides standing in a moving lift.

Checks: the file name must match the file's fields activity_number, subject (against the
folder) and trial. Quirks of the published files, handled and counted in the report:
- ``Subject13/a11t4.mat`` spells the field ``activity_numbr`` (read as activity_number;
  ``report.repairs``);
- three files (``Subject3/a1t3..a1t5.mat``) carry an extra ``comments`` field ("indoor"):
  ignored, listed in ``report.notes``;
- three headers contradict their file name (``PUBLISHED_ERRATA``): ``Subject14/a3t2.mat``
  says activity 2 (walking left) but its signal turns right like the other a3 trials (mean
  gyro_x -17.8 dps; walking left is positive), so its header was copied from a2t2;
  ``Subject3/a8t5.mat`` and ``Subject5/a8t3.mat`` repeat the trial number of another file.
  The file name is kept; each is counted in ``report.repairs``. Any other disagreement is
  an error.
Errors (DataFormatError naming the file): a file that is not a readable .mat, a missing
field or ``sensor_readings``, readings that are not numeric, not 6 columns, empty or not
finite, a subject/activity/trial field that disagrees with the folder or file name, an
unexpected name in a Subject folder or folder in the root, two files or folders for the same
trial or subject.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from fedhar.data.harmonise import to_si
from fedhar.data.labels import ACTIVITY_ID
from fedhar.data.readers.base import Reader
from fedhar.data.schema import PrepareReport, Recording
from fedhar.errors import DataFormatError

RATE_HZ = 100.0
READINGS = "sensor_readings"
READING_COLUMNS = (
    "acc_x [g]", "acc_y [g]", "acc_z [g]", "gyro_x [dps]", "gyro_y [dps]", "gyro_z [dps]"
)
ACTIVITY_FIELD = "activity_number"
ACTIVITY_FIELD_MISSPELT = "activity_numbr"  # one published file
COMMENTS_FIELD = "comments"  # three published files

LABEL_MAP: dict[int, str] = {
    1: "walking",  # Walking Forward
    2: "walking_left",
    3: "walking_right",
    4: "upstairs",
    5: "downstairs",
    6: "running",  # Running Forward
    7: "jumping",  # Jumping Up
    8: "sitting",
    9: "standing",
    10: "lying",  # Sleeping
    11: "elevator_up",
    12: "elevator_down",
}

#: (subject, activity, trial) of the file name -> {field: the published, wrong, value}
PUBLISHED_ERRATA: dict[tuple[int, int, int], dict[str, str]] = {
    (14, 3, 2): {ACTIVITY_FIELD: "2"},  # header of a2t2; the signal turns right
    (3, 8, 5): {"trial": "4"},
    (5, 8, 3): {"trial": "2"},
}

ERRATUM_REPAIR = (
    "header fields contradicting the file name, known errata (file name kept), fields"
)

_SUBJECT_DIR = re.compile(r"^Subject(\d+)$")
_TRIAL_FILE = re.compile(r"^a(\d+)t(\d+)\.mat$")


@dataclass(frozen=True)
class Trial:
    subject: int
    activity: int
    trial: int
    path: Path


def find_trials(root: Path) -> list[Trial]:
    """Every trial file under ``root``, ordered by subject, activity, trial; checks names."""
    root = Path(root)
    subjects: dict[int, Path] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        m = _SUBJECT_DIR.match(folder.name)
        if not m:  # the published root holds no other folder: nothing is skipped unseen
            raise DataFormatError(folder, "unexpected folder: the root holds only Subject<N>/")
        number = int(m.group(1))
        if number in subjects:
            first = subjects[number].name
            raise DataFormatError(folder, f"a second folder for subject {number} (first: {first})")
        subjects[number] = folder
    if not subjects:
        raise DataFormatError(root, "no Subject<N> folders")
    trials = []
    for subject, folder in sorted(subjects.items()):
        trials.extend(_subject_trials(subject, folder))
    return trials


def _subject_trials(subject: int, folder: Path) -> list[Trial]:
    seen: dict[tuple[int, int], Path] = {}
    for path in sorted(folder.iterdir()):
        m = _TRIAL_FILE.match(path.name)
        if not m or not path.is_file():
            raise DataFormatError(
                path,
                f"unexpected name in {folder.name}/: it holds only trial files "
                "a<activity>t<trial>.mat",
            )
        activity, trial = int(m.group(1)), int(m.group(2))
        if activity not in LABEL_MAP:
            known = f"{min(LABEL_MAP)}-{max(LABEL_MAP)}"
            raise DataFormatError(path, f"unknown activity number {activity} (known: {known})")
        if (activity, trial) in seen:
            first = seen[activity, trial].name
            raise DataFormatError(
                path, f"a second file for activity {activity} trial {trial} (first: {first})"
            )
        seen[activity, trial] = path
    if not seen:
        raise DataFormatError(folder, "no trial files a<activity>t<trial>.mat")
    return [Trial(subject, a, t, p) for (a, t), p in sorted(seen.items())]


def load_trial_file(path: Path) -> dict:
    """The fields of one .mat file (scipy.io.loadmat), or a DataFormatError naming it."""
    try:
        return scipy.io.loadmat(path)
    # scipy raises many types for damaged or foreign files (MatReadError, OSError,
    # IndexError, ValueError, ...): all mean the same to a user
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise DataFormatError(path, f"not a readable MATLAB .mat file ({why})") from None


def text_field(path: Path, mat: dict, key: str) -> str:
    value = mat.get(key)
    if value is None:
        raise DataFormatError(path, f"field {key!r} is missing")
    if not (isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.size == 1):
        raise DataFormatError(path, f"field {key!r} is not a text value: {value!r:.60}")
    return str(value.item()).strip()


def readings(path: Path, mat: dict) -> np.ndarray:
    """sensor_readings as (N, 6) float64, checked."""
    value = mat.get(READINGS)
    if value is None:
        raise DataFormatError(path, f"field {READINGS!r} is missing")
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        kind = getattr(value, "dtype", type(value).__name__)
        raise DataFormatError(path, f"{READINGS} is not numeric ({kind})")
    if value.ndim != 2 or value.shape[1] != len(READING_COLUMNS):
        columns = ", ".join(READING_COLUMNS)
        message = f"{READINGS} has shape {value.shape}; expected 6 columns ({columns})"
        raise DataFormatError(path, message)
    if len(value) == 0:
        raise DataFormatError(path, f"empty trial: {READINGS} has no samples")
    bad = np.flatnonzero(~np.isfinite(value).all(axis=1))
    if len(bad):
        raise DataFormatError(path, f"{READINGS} row {bad[0] + 1} holds a non-finite value")
    return value.astype(np.float64)


class UscHadReader(Reader):
    name = "usc-had"
    title = "USC-HAD: MotionNode IMU on the front right hip, 14 subjects, 12 activities, 100 Hz"
    folder_names = ("usc-had/USC-HAD", "USC-HAD", "usc-had")
    label_map = LABEL_MAP
    channels_note = (
        "MotionNode IMU on the front right hip, 100 Hz; accelerometer in g x 9.80665 -> m/s^2 "
        "(gravity included), gyroscope in dps x pi/180 -> rad/s; axes x = vertical (gravity), "
        "y = walking direction, z = perpendicular: the sensor's frame, not a phone's (not rotated)"
    )

    def looks_like_root(self, root: Path) -> bool:
        return any(Path(root).glob("Subject*/a*t*.mat"))

    def source_files(self, root: Path) -> list[Path]:
        return [t.path for t in find_trials(root)]

    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording]:
        trials = find_trials(root)
        subjects = sorted({t.subject for t in trials})
        report.notes.append(
            f"usc-had: {len(trials)} trials of {len(subjects)} subjects, one activity per file "
            "(label from the file name); sensor axes x = vertical, y = walking direction, "
            "not rotated"
        )
        comments: list[str] = []
        for trial in trials:
            yield self.read_trial(trial, report, comments)
        if comments:
            report.notes.append(
                f"usc-had: {len(comments)} files carry an extra '{COMMENTS_FIELD}' field "
                "(ignored): " + "; ".join(comments)
            )

    def read_trial(self, trial: Trial, report: PrepareReport, comments: list[str]) -> Recording:
        path = trial.path
        mat = load_trial_file(path)
        report.files_read += 1
        activity_key = ACTIVITY_FIELD
        if ACTIVITY_FIELD not in mat and ACTIVITY_FIELD_MISSPELT in mat:
            activity_key = ACTIVITY_FIELD_MISSPELT
            report.repairs[
                f"field spelt '{ACTIVITY_FIELD_MISSPELT}' read as '{ACTIVITY_FIELD}', files"
            ] += 1
        # (field, key it is stored under, the number the file's place says, that place)
        expected = (
            (ACTIVITY_FIELD, activity_key, trial.activity, "the file name"),
            ("subject", "subject", trial.subject, f"the folder {path.parent.name}"),
            ("trial", "trial", trial.trial, "the file name"),
        )
        errata = PUBLISHED_ERRATA.get((trial.subject, trial.activity, trial.trial), {})
        for field, key, number, place in expected:
            text = text_field(path, mat, key)
            if text.isdigit() and int(text) == number:
                continue
            if errata.get(field) == text:
                report.repairs[ERRATUM_REPAIR] += 1
                continue
            raise DataFormatError(path, f"field {key!r} says {text!r} but {place} says {number}")
        if COMMENTS_FIELD in mat:
            relative = f"{path.parent.name}/{path.name}"
            comments.append(f"{relative} ({text_field(path, mat, COMMENTS_FIELD)!r})")
        values = readings(path, mat)
        signal = to_si(values, "g", "deg/s")
        labels = np.full(len(signal), ACTIVITY_ID[LABEL_MAP[trial.activity]], np.int64)
        return Recording(signal, labels, RATE_HZ, trial.subject, str(path))
