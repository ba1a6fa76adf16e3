"""Subject-disjoint train/test splits and per-dataset z-normalisation.

Windows of one subject overlap in time and share a gait: a split that puts one subject's
windows on both sides leaks. Every split here is by subject, per dataset, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedhar.data.schema import WindowSet


def split_subjects(
    subjects, test_fraction: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the unique subjects (seeded) and hold out round(test_fraction * n) of them.

    At least one subject lands on each side when there are two or more.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    unique = np.unique(np.asarray(subjects))
    if len(unique) < 2:
        raise ValueError(f"a subject-disjoint split needs >= 2 subjects, got {len(unique)}")
    order = np.random.default_rng(seed).permutation(unique)
    n_test = int(np.clip(round(test_fraction * len(unique)), 1, len(unique) - 1))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def subject_split(
    ws: WindowSet,
    test_fraction: float = 0.3,
    seed: int = 0,
    test_subjects: dict[str, tuple] | None = None,
) -> tuple[WindowSet, WindowSet]:
    """Split each dataset of ``ws`` by subject into (train, test).

    test_subjects: per dataset, a fixed list of test subjects (e.g. a published split)
    used instead of the seeded draw for that dataset.
    """
    test_subjects = test_subjects or {}
    is_test = np.zeros(len(ws), bool)
    for name in ws.datasets():
        in_ds = ws.dataset == name
        if name in test_subjects:
            held_out = np.asarray(test_subjects[name])
        else:
            _, held_out = split_subjects(ws.subject[in_ds], test_fraction, seed)
        is_test |= in_ds & np.isin(ws.subject, held_out)
    return ws.subset(~is_test), ws.subset(is_test)


FIT_CHUNK_ROWS = 16384  # windows read at a time to fit statistics on windows in a file (~48 MiB)


def _scale(std: np.ndarray) -> np.ndarray:
    """A flat channel (std 0) would divide by zero: leave its scale alone."""
    return np.where(std > 1e-8, std, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Normaliser:
    """Per-dataset, per-channel z-normalisation fitted on training windows only."""

    mean: dict[str, np.ndarray]  # dataset -> (6,)
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, train: WindowSet, rows: np.ndarray | None = None) -> Normaliser:
        """Statistics of ``train``'s windows (of its ``rows`` only, if given).

        Windows in memory: numpy's mean and std over all of them (float32). Windows read
        on demand from a cache file (``fedhar.data.mapped``): read FIT_CHUNK_ROWS at a time
        and combined in float64 (Chan et al.'s pairwise update), so all of them are never in
        memory at once; that agrees with the one-pass figures to float32 rounding."""
        if isinstance(train.x, np.ndarray):
            return cls._fit(train if rows is None else train.subset(rows))
        rows = np.arange(len(train)) if rows is None else np.asarray(rows)
        moments: dict[str, tuple] = {}  # dataset -> (count, mean, sum of squared deviations) per channel
        for start in range(0, len(rows), FIT_CHUNK_ROWS):
            chunk = train.subset(np.sort(rows[start:start + FIT_CHUNK_ROWS]))
            for name in chunk.datasets():
                x = chunk.x[chunk.dataset == name].astype(np.float64)
                n, mean = x.shape[0] * x.shape[2], x.mean(axis=(0, 2))
                m2 = ((x - mean[:, None]) ** 2).sum(axis=(0, 2))
                if name in moments:
                    n0, mean0, m20 = moments[name]
                    delta = mean - mean0
                    n, mean, m2 = n0 + n, mean0 + delta * n / (n0 + n), m20 + m2 + delta ** 2 * n0 * n / (n0 + n)
                moments[name] = (n, mean, m2)
        mean = {name: m.astype(np.float32) for name, (_, m, _) in moments.items()}
        std = {name: _scale(np.sqrt(m2 / n).astype(np.float32)) for name, (n, _, m2) in moments.items()}
        return cls(mean, std)

    @classmethod
    def _fit(cls, train: WindowSet) -> Normaliser:
        mean, std = {}, {}
        for name in train.datasets():
            x = train.x[train.dataset == name]
            mean[name] = x.mean(axis=(0, 2)).astype(np.float32)
            std[name] = _scale(x.std(axis=(0, 2)).astype(np.float32))
        return cls(mean, std)

    def apply(self, ws: WindowSet) -> WindowSet:
        x = np.empty_like(ws.x)
        for name in ws.datasets():
            if name not in self.mean:
                raise KeyError(
                    f"no normalisation statistics for dataset {name!r}: it had no training windows"
                )
            rows = ws.dataset == name
            x[rows] = (ws.x[rows] - self.mean[name][:, None]) / self.std[name][:, None]
        return WindowSet(x, ws.y, ws.subject, ws.dataset)

    def to_dict(self) -> dict:
        return {
            name: {"mean": self.mean[name].tolist(), "std": self.std[name].tolist()}
            for name in self.mean
        }


def train_test(
    ws: WindowSet, test_fraction: float = 0.3, seed: int = 0, test_subjects=None
) -> tuple[WindowSet, WindowSet, Normaliser]:
    """Subject-disjoint split, then z-normalise both sides with training statistics."""
    train, test = subject_split(ws, test_fraction, seed, test_subjects)
    norm = Normaliser.fit(train)
    return norm.apply(train), norm.apply(test), norm


def lodo_split(ws: WindowSet, train_fraction: float, seed: int, test_subjects=None
               ) -> tuple[WindowSet, WindowSet, Normaliser]:
    """The centralised LODO split of one dataset (fedhar.lodo), also what a federated server
    holds out to compare with it: ``train_test`` with test fraction ``1 - train_fraction``,
    computed so, because ``1 - 0.7 = 0.30000000000000004`` rounds differently from 0.3 for
    15 subjects (RealWorld): 5 test subjects, not 4."""
    return train_test(ws, test_fraction=1.0 - train_fraction, seed=seed, test_subjects=test_subjects)
