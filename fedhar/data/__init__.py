"""Real and synthetic HAR data in one harmonised form (see schema.py)."""

from fedhar.data.harmonise import WindowConfig
from fedhar.data.labels import ACTIVITIES, LabelSpace, activities
from fedhar.data.loading import Prepared, find_dataset, load
from fedhar.data.registry import register_reader
from fedhar.data.schema import CHANNEL_UNITS, CHANNELS, PrepareReport, Recording, WindowSet
from fedhar.data.splits import Normaliser, subject_split, train_test

__all__ = [
    "ACTIVITIES",
    "CHANNELS",
    "CHANNEL_UNITS",
    "LabelSpace",
    "Normaliser",
    "Prepared",
    "PrepareReport",
    "Recording",
    "WindowConfig",
    "WindowSet",
    "activities",
    "find_dataset",
    "load",
    "register_reader",
    "subject_split",
    "train_test",
]
