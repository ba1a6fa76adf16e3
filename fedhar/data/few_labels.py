"""Few labels: which training windows carry labels, and which clients have any (issue 22).

A wearable deployment labels a few minutes per user, not scattered windows. So, within one
client, each activity keeps ``ceil(fraction * n)`` of its ``n`` training windows labelled (at
least one), shared out over the subjects who performed it in proportion to their windows
(largest remainder; ties drawn with the seed), and each subject's share is one seeded,
time-contiguous block of that subject's windows of the activity. A client holding one subject
(``--partition subject``) thus labels ``ceil(fraction * n)`` per activity. The count is fixed
per activity, not per (subject, activity): a Dirichlet client holds a few scattered windows of
many subjects, and "at least one per subject" would label most of them. The other windows
carry no label and serve only self-supervised pretraining. Windows are in time order within a subject's recording
(``fedhar.data.partition`` keeps index order), so a block of consecutive indices of one
activity is a stretch of that activity in time.

Only training windows are passed in: test windows are never selected and never change.
"""

from __future__ import annotations

import math

import numpy as np


def labelled_windows(y: np.ndarray, group: np.ndarray, fraction: float, seed) -> np.ndarray:
    """Sorted positions (into ``y``) of the labelled windows.

    y: activity per window; group: the subject (or any recording key) per window, windows in
    time order within a group; fraction in (0, 1]; seed: an int or a sequence of ints
    (``numpy.random.default_rng``), e.g. ``[run seed, client id]``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    y, group = np.asarray(y), np.asarray(group)
    if fraction == 1:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(y):
        groups, sizes = np.unique(group[y == label], return_counts=True)
        total = max(1, math.ceil(round(fraction * sizes.sum(), 9)))  # round: 0.3 * 10 is 3.0000000000000004
        for g, n in zip(groups, _shares(total, sizes, rng)):
            if n:
                idx = np.flatnonzero((group == g) & (y == label))
                start = int(rng.integers(0, len(idx) - n + 1))
                chosen.append(idx[start:start + n])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _shares(total: int, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``total`` split over groups of ``sizes`` in proportion (largest remainder, ties at random;
    one group takes all without drawing, so subject clients keep their random stream)."""
    if len(sizes) == 1:
        return np.array([total])
    exact = total * sizes / sizes.sum()
    shares = np.floor(exact).astype(int)
    order = np.lexsort((rng.permutation(len(sizes)), -(exact - shares)))  # largest remainder first
    shares[order[:total - shares.sum()]] += 1
    return shares


def labelled_clients(n_clients: int, k: int, seed: int) -> list[int]:
    """The ``k`` client ids (of 0..n_clients-1, sorted) that have labels; k = 0 means all."""
    if k == 0 or k >= n_clients:
        if k > n_clients:
            raise ValueError(f"{k} labelled clients of {n_clients}")
        return list(range(n_clients))
    rng = np.random.default_rng([seed, n_clients, k])
    return sorted(int(c) for c in rng.choice(n_clients, size=k, replace=False))
