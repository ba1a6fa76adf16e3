"""Reader of UCI-HAR: Human Activity Recognition Using Smartphones (UCI dataset 240).

Anguita, Ghio, Oneto, Parra, Reyes-Ortiz, ESANN 2013. 30 volunteers, a Samsung Galaxy S II
on the waist, 50 Hz. Published already windowed: 2.56 s windows of 128 samples with 50%
overlap, 7352 train / 2947 test windows (the published row counts of y_train.txt and
y_test.txt), subjects 2, 4, 9, 10, 12, 13, 18, 20, 24 in the test split (21 train / 9 test).

Two forms are read; ``read`` dispatches on which one ``locate`` found.

1. The published folder ``UCI HAR Dataset/`` (also accepted as ``uci-har/`` or
   ``uci-har/UCI HAR Dataset/``):
       {train,test}/Inertial Signals/total_acc_{x,y,z}_{split}.txt  acceleration in g,
                                       gravity included
       {train,test}/Inertial Signals/body_gyro_{x,y,z}_{split}.txt  angular velocity, rad/s
       {train,test}/y_{split}.txt        activity id 1-6, one line per window
       {train,test}/subject_{split}.txt  subject 1-30, one line per window
       activity_labels.txt               "1 WALKING" ... "6 LAYING"
   Each signal file holds one window per line: 128 whitespace-separated floats written as
   "%16.7e"-style fields with three-digit exponents ("  1.0128170e+000 -1.2321670e-001").
   body_acc_* (gravity removed) and the 561-feature X_* files are not read.
   Output: ``WindowSet``s (x (N, 6, 128) float32, channels first), one per split; acc is
   multiplied by STANDARD_GRAVITY (9.80665) to m/s^2. The 8 files of a split (6 signals, y,
   subject) must have the same number of rows.

2. Derived from HAPT (UCI 341) when no published folder is present but HAPT's raw
   recordings are (the same 30 people and sessions; HAPT is UCI-HAR's raw source). The HAPT
   reader reads the recordings; then, following the UCI-HAR protocol, only activities 1-6
   are kept: postural-transition samples (HAPT ids 7-12) are cut out and counted under
   ``report.dropped``, and each experiment is split at them (so ``report.recordings`` counts
   the pieces). Windows of 128 samples, step 64, are cut by the common harmonise path inside
   each activity run, and the published split applies through ``published_test_subjects``.
   On the shared copy this gives 7415 train / 2996 test windows, close to the published
   7352 / 2947 (the published windows were cut by the authors' own, unreleased, rule).

Labels (native id -> global activity): 1 walking, 2 upstairs (WALKING_UPSTAIRS),
3 downstairs (WALKING_DOWNSTAIRS), 4 sitting, 5 standing, 6 lying (LAYING).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedhar.data.labels import ACTIVITY_ID, UNLABELLED
from fedhar.data.readers.base import Reader
from fedhar.data.readers.hapt import HaptReader, read_table
from fedhar.data.schema import STANDARD_GRAVITY, PrepareReport, Recording, WindowSet
from fedhar.errors import DataFormatError

WINDOW = 128
SPLITS = ("train", "test")
#: the 6 signal files used, in CHANNELS order (acc x,y,z then gyro x,y,z)
SIGNALS = ("total_acc_x", "total_acc_y", "total_acc_z", "body_gyro_x", "body_gyro_y", "body_gyro_z")
TRANSITIONS_DROPPED = "postural-transition samples (not among UCI-HAR's 6 activities)"


def signal_path(root: Path, split: str, signal: str) -> Path:
    return Path(root) / split / "Inertial Signals" / f"{signal}_{split}.txt"


def is_published_root(root: Path) -> bool:
    root = Path(root)
    return (root / "train" / "y_train.txt").is_file() and signal_path(
        root, "train", "total_acc_x"
    ).is_file()


class UciHarReader(Reader):
    name = "uci-har"
    title = "UCI-HAR (UCI 240): waist smartphone, 30 subjects, 6 activities (or derived from HAPT)"
    folder_names = ("uci-har", "UCI HAR Dataset", "uci-har/UCI HAR Dataset")
    # UCI-HAR's ids 1-6 are HAPT's first six activities (same people, same protocol)
    label_map = {k: v for k, v in HaptReader.label_map.items() if k <= 6}
    published_test_subjects = (2, 4, 9, 10, 12, 13, 18, 20, 24)
    channels_note = (
        "Samsung Galaxy S II on the waist, 50 Hz; total_acc in g x 9.80665 -> m/s^2 "
        "(gravity included), body_gyro in rad/s"
    )

    def locate(self, data_dir: Path) -> Path | None:
        """The published folder, if present."""
        for folder in self.folder_names:
            root = Path(data_dir) / folder
            if root.is_dir() and is_published_root(root):
                return root
        return None

    def locate_fallback(self, data_dir: Path) -> Path | None:
        """A HAPT root to derive UCI-HAR from (used only where no data dir has the published form)."""
        return HaptReader().locate(data_dir)

    def describe_root(self, root: Path) -> str:
        return "" if is_published_root(root) else "derived from the HAPT raw recordings by the UCI-HAR protocol"

    def looks_like_root(self, root: Path) -> bool:
        return is_published_root(root) or HaptReader().looks_like_root(root)

    def source_files(self, root: Path) -> list[Path]:
        if not is_published_root(root):
            return HaptReader().source_files(root)
        files = []
        for split in SPLITS:
            files += [signal_path(root, split, s) for s in SIGNALS]
            files += [Path(root) / split / f"{kind}_{split}.txt" for kind in ("y", "subject")]
        return files

    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording | WindowSet]:
        if is_published_root(root):
            for split in SPLITS:
                yield self.read_split(Path(root), split, report)
        else:
            yield from self.derive_from_hapt(Path(root), report)

    # ------------------------------------------------------------------ published form

    def read_split(self, root: Path, split: str, report: PrepareReport) -> WindowSet:
        y_path = root / split / f"y_{split}.txt"
        subject_path = root / split / f"subject_{split}.txt"
        native = read_table(y_path, 1, np.int64)[:, 0]
        subject = read_table(subject_path, 1, np.int64)[:, 0]
        report.files_read += 2
        n = len(native)
        self._check_rows(subject_path, len(subject), y_path, n)
        y = self._global_labels(y_path, native)
        channels = []
        for signal in SIGNALS:
            path = signal_path(root, split, signal)
            table = read_table(path, WINDOW)
            report.files_read += 1
            self._check_rows(path, len(table), y_path, n)
            channels.append(table)
        x = np.stack(channels, axis=1)  # (N, 6, 128)
        x[:, :3] *= STANDARD_GRAVITY
        report.notes.append(
            f"uci-har {split}: {n} published windows of {len(np.unique(subject))} subjects"
        )
        return WindowSet(
            x.astype(np.float32), y, subject.astype(np.int64), np.full(n, self.name, "<U32")
        )

    @staticmethod
    def _check_rows(path: Path, rows: int, y_path: Path, expected: int) -> None:
        if rows != expected:
            raise DataFormatError(
                path,
                f"{rows} rows but {y_path.name} has {expected}: every file of a split "
                "must have one row per window",
                line=min(rows, expected) + 1,
            )

    def _global_labels(self, path: Path, native: np.ndarray) -> np.ndarray:
        lookup = {k: ACTIVITY_ID[v] for k, v in self.label_map.items()}
        unknown = ~np.isin(native, list(lookup))
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise DataFormatError(
                path, f"unknown activity id {native[i]} (known: 1-6)", line=i + 1
            )
        return np.array([lookup[v] for v in native.tolist()], np.int64)

    # ------------------------------------------------------------------ derived form

    def derive_from_hapt(self, root: Path, report: PrepareReport) -> Iterator[Recording]:
        report.notes.append(
            f"uci-har derived from HAPT raw recordings at {root} (no published 'UCI HAR "
            "Dataset' folder found): activities 1-6 only, postural transitions cut out "
            "(each experiment is split at them, so 'recordings' counts the pieces), "
            "128-sample windows with step 64 inside each activity run, published 21/9 "
            "subject split; window counts differ slightly from the published 7352/2947"
        )
        keep_ids = np.array([ACTIVITY_ID[v] for v in self.label_map.values()])
        for rec in HaptReader().read(root, report):
            dropped = (rec.labels != UNLABELLED) & ~np.isin(rec.labels, keep_ids)
            report.dropped[TRANSITIONS_DROPPED] += int(dropped.sum())
            yield from split_out(rec, dropped)


def split_out(rec: Recording, drop: np.ndarray) -> list[Recording]:
    """The pieces of ``rec`` left after removing the samples where ``drop`` is True.

    Removed stretches split the recording rather than being glued over, so no piece pretends
    that samples on either side of a cut are contiguous.
    """
    if not drop.any():
        return [rec]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], (~drop).astype(np.int8), [0]])))
    pieces = []
    for start, stop in zip(edges[0::2], edges[1::2]):
        pieces.append(
            Recording(
                rec.signal[start:stop],
                rec.labels[start:stop],
                rec.rate,
                rec.subject,
                f"{rec.source} samples {start + 1}-{stop}",
            )
        )
    return pieces
