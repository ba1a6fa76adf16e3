"""The union label space shared by every dataset.

Each activity has one fixed integer id, so labels stay comparable across datasets,
caches and federations. A reader maps its native labels onto these names through a
visible table (``Reader.label_map``); native labels mapped to ``None`` are dropped on
purpose (e.g. PAMAP2's "transient" 0, HHAR's "null") and counted in the report.

Merges made here, following the common HAR practice of the reference paper's group:
jogging (MotionSense) = running; biking (HHAR) = cycling; climbing up/down and
walking up/downstairs = upstairs/downstairs; laying = lying; USC-HAD's sleeping (lying on a
bed) = lying. Kept apart on purpose so USC-HAD's own 12-class task survives: its walking
left / right (walking while turning left / right) and elevator up / down
(standing in a moving lift), appended as walking_left, walking_right, elevator_up,
elevator_down; its walking forward is walking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Order is part of the on-disk format of caches: append only, never reorder.
ACTIVITIES: tuple[str, ...] = (
    "walking",
    "upstairs",
    "downstairs",
    "sitting",
    "standing",
    "lying",
    "running",
    "cycling",
    "nordic_walking",
    "jumping",
    "rope_jumping",
    "vacuum_cleaning",
    "ironing",
    "stand_to_sit",
    "sit_to_stand",
    "sit_to_lie",
    "lie_to_sit",
    "stand_to_lie",
    "lie_to_stand",
    "walking_left",
    "walking_right",
    "elevator_up",
    "elevator_down",
)
ACTIVITY_ID: dict[str, int] = {name: i for i, name in enumerate(ACTIVITIES)}
UNLABELLED = -1


def activity_id(name: str) -> int:
    try:
        return ACTIVITY_ID[name]
    except KeyError:
        raise KeyError(f"unknown activity {name!r}; known: {', '.join(ACTIVITIES)}") from None


@dataclass(frozen=True)
class LabelSpace:
    """A contiguous re-indexing of a subset of ACTIVITIES, for a classifier head."""

    names: tuple[str, ...]

    @classmethod
    def from_ids(cls, ids) -> LabelSpace:
        present = sorted({int(i) for i in np.asarray(ids).ravel() if i != UNLABELLED})
        return cls(tuple(ACTIVITIES[i] for i in present))

    @property
    def size(self) -> int:
        return len(self.names)

    def encode(self, global_ids: np.ndarray) -> np.ndarray:
        """Global activity ids -> 0..size-1. Raises on an id outside the space."""
        lookup = np.full(len(ACTIVITIES), -1, dtype=np.int64)
        for j, name in enumerate(self.names):
            lookup[ACTIVITY_ID[name]] = j
        out = lookup[np.asarray(global_ids, dtype=np.int64)]
        if (out < 0).any():
            bad = sorted({ACTIVITIES[i] for i in np.asarray(global_ids)[out < 0]})
            raise ValueError(f"activities {bad} are not in this label space {self.names}")
        return out

    def decode(self, local_ids: np.ndarray) -> np.ndarray:
        table = np.array([ACTIVITY_ID[n] for n in self.names], dtype=np.int64)
        return table[np.asarray(local_ids, dtype=np.int64)]
