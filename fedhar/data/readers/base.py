"""What every dataset reader provides.

A reader knows one published file layout. It finds the dataset under a data directory
(``locate``), lists the files its output depends on (``source_files``, for the cache key)
and yields ``Recording``s in canonical units at the native rate (``read``), counting every
repair and drop in the ``PrepareReport`` it is given. Resampling to 50 Hz and windowing are
done afterwards, identically for all readers (fedhar.data.harmonise).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from fedhar.data.schema import PrepareReport, Recording, WindowSet


class Reader(ABC):
    #: short name used on the command line and in WindowSet.dataset
    name: ClassVar[str]
    #: bump when the reader's output changes: it is part of the cache key
    version: ClassVar[int] = 1
    #: one line for `fedhar data list`
    title: ClassVar[str]
    #: folder names under a data dir where the dataset may be unpacked, first preferred
    folder_names: ClassVar[tuple[str, ...]]
    #: native label -> global activity name (fedhar.data.labels), None = dropped on purpose
    label_map: ClassVar[dict]
    #: subjects of the dataset's published test split, where it has one
    published_test_subjects: ClassVar[tuple[int, ...] | None] = None
    #: text on the channels used (position, units conversion), shown by `fedhar data info`
    channels_note: ClassVar[str] = ""

    def locate(self, data_dir: Path) -> Path | None:
        """The dataset's root folder under ``data_dir``, or None when it is not there."""
        for folder in self.folder_names:
            root = Path(data_dir) / folder
            if root.is_dir() and self.looks_like_root(root):
                return root
        return None

    def locate_fallback(self, data_dir: Path) -> Path | None:
        """A second-choice source, tried in every data dir only after ``locate`` failed in all."""
        return None

    def describe_root(self, root: Path) -> str:
        """A note on the form found at ``root`` for `fedhar data list` ("" = the usual one)."""
        return ""

    @abstractmethod
    def looks_like_root(self, root: Path) -> bool:
        """True when the marker files of the published layout are in ``root``."""

    @abstractmethod
    def source_files(self, root: Path) -> list[Path]:
        """Every file whose content the prepared windows depend on."""

    @abstractmethod
    def read(self, root: Path, report: PrepareReport) -> Iterator[Recording | WindowSet]:
        """Yield the dataset's recordings (or WindowSets, for a dataset published already
        windowed); count files read, repairs and drops in ``report``."""
