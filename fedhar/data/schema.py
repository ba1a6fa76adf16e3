"""The common forms every dataset is turned into.

``Recording``: one continuous, uniformly sampled stretch of one subject's sensors, as a
reader yields it (native rate, canonical units and channel order, per-sample labels).
``WindowSet``: harmonised windows (50 Hz, 6 channels, 128 samples) ready for models.

Channel order and units (documented once, used everywhere):
    0-2  accelerometer x, y, z in m/s^2, gravity included
    3-5  gyroscope x, y, z in rad/s
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fedhar.data.labels import UNLABELLED, activities

CHANNELS: tuple[str, ...] = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
CHANNEL_UNITS: tuple[str, ...] = ("m/s^2",) * 3 + ("rad/s",) * 3
STANDARD_GRAVITY = 9.80665  # m/s^2 per g


@dataclass
class Recording:
    """One continuous, uniformly sampled recording of one subject.

    signal: (T, 6) float array in CHANNELS order and CHANNEL_UNITS.
    labels: (T,) int array of global activity ids (fedhar.data.labels), -1 = unlabelled.
    rate:   sampling rate in Hz (uniform; readers regularise irregular clocks first).
    source: the file(s) it came from, for error messages and reports.
    """

    signal: np.ndarray
    labels: np.ndarray
    rate: float
    subject: int
    source: str

    def __post_init__(self):
        if self.signal.ndim != 2 or self.signal.shape[1] != len(CHANNELS):
            raise ValueError(f"{self.source}: signal must be (T, 6), got {self.signal.shape}")
        if self.labels.shape != (self.signal.shape[0],):
            raise ValueError(
                f"{self.source}: {self.signal.shape[0]} samples but {self.labels.shape} labels"
            )


@dataclass
class PrepareReport:
    """What happened while preparing one dataset: nothing is dropped or repaired silently.

    repairs: deliberate fixes of a dataset's known quirks, name -> count.
    dropped: data left out, reason -> count (unit is in the reason text).
    """

    dataset: str
    files_read: int = 0
    recordings: int = 0
    samples_in: int = 0
    windows: int = 0
    repairs: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "files_read": self.files_read,
            "recordings": self.recordings,
            "samples_in": self.samples_in,
            "windows": self.windows,
            "repairs": dict(self.repairs),
            "dropped": dict(self.dropped),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PrepareReport:
        return cls(
            dataset=d["dataset"],
            files_read=d["files_read"],
            recordings=d["recordings"],
            samples_in=d["samples_in"],
            windows=d["windows"],
            repairs=Counter(d["repairs"]),
            dropped=Counter(d["dropped"]),
            notes=list(d["notes"]),
        )


@dataclass
class WindowSet:
    """Harmonised windows of one or more datasets.

    x:       (N, 6, L) float32, channels first (L = 128 by default); for a large dataset
             a ``fedhar.data.mapped.MappedRows``: read from the cache file on demand, so
             ``subset`` gives in-memory windows and ``x`` itself holds none.
    y:       (N,) int64 global activity ids.
    subject: (N,) int64 subject id, unique within its dataset.
    dataset: (N,) str dataset name of each window.
    """

    x: np.ndarray
    y: np.ndarray
    subject: np.ndarray
    dataset: np.ndarray

    def __post_init__(self):
        n = len(self.x)
        for name in ("y", "subject", "dataset"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"WindowSet: {name} has {len(getattr(self, name))} rows, x has {n}")
        if n and (np.asarray(self.y) == UNLABELLED).any():
            raise ValueError("WindowSet: unlabelled windows must be dropped before this point")

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index) -> WindowSet:
        return WindowSet(self.x[index], self.y[index], self.subject[index], self.dataset[index])

    @classmethod
    def empty(cls, length: int = 128) -> WindowSet:
        return cls(
            np.zeros((0, len(CHANNELS), length), np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, dtype="<U32"),
        )

    @classmethod
    def concat(cls, parts: list[WindowSet]) -> WindowSet:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:  # as it is: mapped windows stay in their file
            (p,) = parts
            return cls(p.x, p.y, p.subject, p.dataset.astype("<U32", copy=False))
        return cls(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.subject for p in parts]),
            np.concatenate([p.dataset.astype("<U32") for p in parts]),
        )

    def labels_only(self) -> WindowSet:
        """The same windows without their samples (x of shape (N, 0, 0)): for splitting and
        partitioning, which need labels, subjects and datasets only, without reading x."""
        return WindowSet(np.empty((len(self), 0, 0), np.float32), self.y, self.subject, self.dataset)

    def subject_keys(self) -> np.ndarray:
        """Globally unique subject keys, "dataset/subject" (ids repeat across datasets)."""
        return np.char.add(np.char.add(self.dataset.astype(str), "/"), self.subject.astype(str))

    def datasets(self) -> list[str]:
        return sorted(set(self.dataset.tolist()))

    def class_counts(self) -> dict[str, int]:
        ids, counts = np.unique(self.y, return_counts=True)
        return {activities()[i]: int(c) for i, c in zip(ids, counts)}
