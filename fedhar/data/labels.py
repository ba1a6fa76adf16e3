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
elevator_down; its walking forward is walking. WISDM's jogging = running; its stairs (up and
down not told apart) and kicking (a soccer ball) match no class here and are appended as
stairs and kicking: a stairs window is never counted as up- or downstairs.

Datasets from outside the package may bring activities of their own
(``fedhar.data.registry.register_reader``): ``add_activities`` appends them after the
built-in ones, in the order the readers are registered, so no existing id ever changes.
``activities()`` is the whole label space; ``ACTIVITIES`` stays the built-in part.
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
    "stairs",
    "kicking",
)
ACTIVITY_ID: dict[str, int] = {name: i for i, name in enumerate(ACTIVITIES)}  # grows in place
UNLABELLED = -1
_ALL: list[str] = list(ACTIVITIES)  # the built-in activities, then those readers added


#: the merges above, for names readers without a label table give (a folder dataset's manifest):
#: a name, normalised by ``normalise_activity``, -> the union's activity
MERGES: dict[str, str] = {
    "jogging": "running",
    "jog": "running",
    "biking": "cycling",
    "bike": "cycling",
    "climbing_up": "upstairs",
    "climbingup": "upstairs",
    "walking_upstairs": "upstairs",
    "upstairs_walking": "upstairs",
    "climbing_down": "downstairs",
    "climbingdown": "downstairs",
    "walking_downstairs": "downstairs",
    "downstairs_walking": "downstairs",
    "laying": "lying",
    "sleeping": "lying",
    "walking_forward": "walking",
}


def normalise_activity(name: str) -> str:
    """A free-text activity name in the union's form: outer spaces stripped, lower case, inner
    spaces and '-' as '_' ("Walking " -> walking, "Walking Upstairs" -> upstairs), then the
    union's merges (MERGES: jogging -> running, ...)."""
    key = "_".join(name.strip().lower().replace("-", " ").split())
    return MERGES.get(key, key)


def activities() -> tuple[str, ...]:
    """Every activity name, by id: the built-in ones, then those registered readers added."""
    return tuple(_ALL)


def add_activities(names) -> list[str]:
    """Append the names not known yet (append-only: existing ids never change); returns them.

    Ids of added names depend on the order of registration, which every process of a run
    repeats (the run config names the readers in order): window caches key on them."""
    added = []
    for name in names:
        if name is None or name in ACTIVITY_ID:
            continue
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"an activity name must be a non-empty string without outer spaces, got {name!r}")
        ACTIVITY_ID[name] = len(_ALL)
        _ALL.append(name)
        added.append(name)
    return added


def activity_id(name: str) -> int:
    try:
        return ACTIVITY_ID[name]
    except KeyError:
        raise KeyError(f"unknown activity {name!r}; known: {', '.join(_ALL)}") from None


@dataclass(frozen=True)
class LabelSpace:
    """A contiguous re-indexing of a subset of ``activities()``, for a classifier head."""

    names: tuple[str, ...]

    @classmethod
    def from_ids(cls, ids) -> LabelSpace:
        present = sorted({int(i) for i in np.asarray(ids).ravel() if i != UNLABELLED})
        return cls(tuple(_ALL[i] for i in present))

    @property
    def size(self) -> int:
        return len(self.names)

    def encode(self, global_ids: np.ndarray) -> np.ndarray:
        """Global activity ids -> 0..size-1. Raises on an id outside the space."""
        lookup = np.full(len(_ALL), -1, dtype=np.int64)
        for j, name in enumerate(self.names):
            lookup[ACTIVITY_ID[name]] = j
        out = lookup[np.asarray(global_ids, dtype=np.int64)]
        if (out < 0).any():
            bad = sorted({_ALL[i] for i in np.asarray(global_ids)[out < 0]})
            raise ValueError(f"activities {bad} are not in this label space {self.names}")
        return out

    def decode(self, local_ids: np.ndarray) -> np.ndarray:
        table = np.array([ACTIVITY_ID[n] for n in self.names], dtype=np.int64)
        return table[np.asarray(local_ids, dtype=np.int64)]


def encode_open(labels: LabelSpace, global_ids, n_outputs: int | None = None) -> tuple[np.ndarray, int]:
    """Global activity ids -> class indices of a head over ``labels`` with ``n_outputs``
    outputs, and how many ids the head has no output for.

    An id outside ``labels`` is not dropped: it gets its own index >= n_outputs, so the
    window always counts as an error and its class enters the macro averages (recall 0).
    """
    ids = np.asarray(global_ids, np.int64)
    n_outputs = labels.size if n_outputs is None else n_outputs
    known = np.isin(ids, [ACTIVITY_ID[n] for n in labels.names])
    out = np.empty(len(ids), np.int64)
    out[known] = labels.encode(ids[known])
    unknown = np.unique(ids[~known])
    out[~known] = n_outputs + np.searchsorted(unknown, ids[~known])
    return out, int((~known).sum())
