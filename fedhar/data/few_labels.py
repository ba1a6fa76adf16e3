"""Few labels: which training windows carry labels, and which clients have any (issue 22).

A wearable deployment labels a few minutes per user, not scattered windows. So, within one
client, every (subject, activity) group of its training windows keeps one seeded,
time-contiguous block of ``ceil(fraction * n)`` of its ``n`` windows as labelled (at least one
per activity the subject performed); the other windows carry no label and serve only
self-supervised pretraining. Windows are in time order within a subject's recording
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
    for g in np.unique(group):
        in_group = group == g
        for label in np.unique(y[in_group]):
            idx = np.flatnonzero(in_group & (y == label))
            n = max(1, math.ceil(round(fraction * len(idx), 9)))  # round: 0.3 * 10 is 3.0000000000000004
            start = int(rng.integers(0, len(idx) - n + 1))
            chosen.append(idx[start:start + n])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def labelled_clients(n_clients: int, k: int, seed: int) -> list[int]:
    """The ``k`` client ids (of 0..n_clients-1, sorted) that have labels; k = 0 means all."""
    if k == 0 or k >= n_clients:
        if k > n_clients:
            raise ValueError(f"{k} labelled clients of {n_clients}")
        return list(range(n_clients))
    rng = np.random.default_rng([seed, n_clients, k])
    return sorted(int(c) for c in rng.choice(n_clients, size=k, replace=False))
