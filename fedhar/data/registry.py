"""The datasets fedhar knows, by name, and how a dataset from outside the package joins them.

A dataset is one reader module (a ``fedhar.data.readers.base.Reader`` subclass), or a folder
of recordings with a ``manifest.csv`` (no code: ``fedhar.data.readers.folder``). Three ways
to add one, all ending in ``register_reader``:

  * ``register_reader("mine", MyReader)`` in your own code (this process only);
  * the run-config key ``readers`` (``fedhar fl --readers mypkg.har:MyReader``): every
    process of a run (server, Ray actors, SuperNodes) imports it from the run config, so
    the clients know the dataset too. An item is ``module:Class`` (a Reader, registered
    under its ``name``), ``module:function`` (called; it registers) or ``module``
    (imported; registering at import);
  * an entry point of an installed package, group ``fedhar.datasets``
    (``[project.entry-points."fedhar.datasets"] mine = "mypkg.har:MyReader"``), registered
    on first use, in name order.

Activities a reader's ``label_map`` names that fedhar does not know are appended to the
union label space (``fedhar.data.labels.add_activities``): existing ids never change.
"""

from __future__ import annotations

import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

from fedhar.data.labels import add_activities
from fedhar.data.readers.base import Reader
from fedhar.errors import FedharError
from fedhar.plugins import import_target

SYNTHETIC = "synthetic"
ENTRY_POINT_GROUP = "fedhar.datasets"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")  # no ',' '+' ':' (list and module:name separators)

# name -> "module:Class" (imported lazily, so one broken reader cannot break the others) or
# a Reader subclass (registered at run time)
_READERS: dict[str, str | type[Reader]] = {
    "uci-har": "fedhar.data.readers.uci_har:UciHarReader",
    "hapt": "fedhar.data.readers.hapt:HaptReader",
    "motionsense": "fedhar.data.readers.motionsense:MotionSenseReader",
    "hhar": "fedhar.data.readers.hhar:HharReader",
    "realworld": "fedhar.data.readers.realworld:RealWorldReader",
    "pamap2": "fedhar.data.readers.pamap2:Pamap2Reader",
    "usc-had": "fedhar.data.readers.usc_had:UscHadReader",
    "wisdm": "fedhar.data.readers.wisdm:WisdmReader",
}
_BUILTIN = tuple(_READERS)
_entry_points_loaded = False

#: datasets recorded from the same subjects: never pretrain on one and test on the other
SAME_PEOPLE = ({"hapt", "uci-har"},)

#: the reference paper's five datasets
REFERENCE_FIVE = ("hhar", "motionsense", "realworld", "uci-har", "pamap2")


def register_reader(name: str, reader: str | type[Reader], activities=None) -> None:
    """Make dataset ``name`` loadable: ``reader`` is a Reader subclass or "module:Class".

    activities: activity names to add to the label space, in this order; default: the
    names the reader's ``label_map`` maps to (None, "dropped", excluded). Registering the
    same reader again is a no-op; another reader under a taken name is an error.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name == SYNTHETIC:
        raise FedharError(f"dataset name {name!r}: use lower-case letters, digits, '-', '_' or '.', "
                          f"and not {SYNTHETIC!r}")
    cls = import_target(reader, "reader") if isinstance(reader, str) else reader
    if not (isinstance(cls, type) and issubclass(cls, Reader)):
        raise FedharError(f"dataset {name!r}: {reader!r} is not a subclass of fedhar.data.readers.base.Reader")
    known = _READERS.get(name)
    if known is not None and known is not cls and known != f"{cls.__module__}:{cls.__qualname__}":
        raise FedharError(f"dataset {name!r} is already registered ({known}); choose another name")
    if activities is None:
        activities = list(dict.fromkeys(v for v in getattr(cls, "label_map", {}).values() if v is not None))
    try:
        add_activities(activities)
    except ValueError as e:
        raise FedharError(f"dataset {name!r}: {e}") from None
    _READERS[name] = cls


def load_readers(spec: str) -> None:
    """The run config's ``readers``: comma-separated ``module:Class`` | ``module:function`` |
    ``module``, registered in order (see the module docstring). Idempotent."""
    for item in (part.strip() for part in (spec or "").split(",")):
        if not item:
            continue
        if is_folder_item(item):
            register_folder(item)
            continue
        obj = import_target(item, "readers")
        if isinstance(obj, type) and issubclass(obj, Reader):
            register_reader(getattr(obj, "name", ""), obj)
        elif callable(obj) and not isinstance(obj, type):
            obj()
        elif ":" in item:
            raise FedharError(f"readers {item!r}: neither a Reader subclass nor a function")


def check_dataset(name: str, flag: str) -> str:
    """``name`` if it is a known dataset (after --readers registered theirs), else a FedharError
    naming ``--flag``; a folder given as a dataset is told to come through --readers."""
    from fedhar.options import check_name

    try:
        return check_name("dataset", name, dataset_names())
    except FedharError as e:
        hint = (f" (a folder dataset: --readers {name} --data {Path(name).name or 'NAME'})"
                if is_folder_item(name) else "")
        raise FedharError(f"--{flag}: {e}{hint}") from None


def load_readers_and_check(readers: str, datasets: dict[str, tuple[str, ...] | list[str]]) -> None:
    """A command's --readers registered (they add dataset names), then the datasets of each
    option (flag -> names) checked against them: `fedhar lodo`, `fedhar evaluate`."""
    load_readers(readers)
    for flag, names in datasets.items():
        for name in names:
            check_dataset(name, flag)


def is_folder_item(item: str) -> bool:
    """A ``readers`` item naming a folder dataset (a path, or NAME=path), not a module."""
    return "/" in item or os.sep in item or "=" in item or (Path(item) / "manifest.csv").is_file()


def _folder_item(item: str) -> tuple[str, Path]:
    name, _, path = item.rpartition("=")
    folder = Path(path.strip()).expanduser().resolve()
    return name.strip() or folder.name, folder


def register_folder(item: str) -> str:
    """Register the folder dataset ``path`` (named after the folder) or ``NAME=path``; its name."""
    from fedhar.data.readers.folder import folder_reader

    name, folder = _folder_item(item)
    if not _NAME.match(name):
        raise FedharError(f"readers {item!r}: the folder name {name!r} is not a dataset name (lower-case letters, "
                          f"digits, '-', '_', '.'): name it NAME={folder}")
    register_reader(name, folder_reader(name, folder))
    return name


def absolute_readers(spec: str) -> str:
    """``spec`` with folder datasets as NAME=/absolute/path: the run's processes may start elsewhere."""
    items = [part.strip() for part in (spec or "").split(",") if part.strip()]
    return ",".join("=".join(map(str, _folder_item(i))) if is_folder_item(i) else i for i in items)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        try:
            register_reader(ep.name, ep.value)
        except FedharError as e:  # one broken plugin must not hide every other dataset
            print(f"fedhar: dataset entry point {ep.name} = {ep.value} ignored: {e}", file=sys.stderr)


def reader_names() -> list[str]:
    _load_entry_points()
    return list(_READERS)


def builtin_reader_names() -> list[str]:
    """The datasets fedhar itself reads (and can download)."""
    return list(_BUILTIN)


def dataset_names() -> list[str]:
    return [*reader_names(), SYNTHETIC]


def get_reader(name: str) -> Reader:
    from fedhar.options import check_name

    target = _READERS[check_name("dataset", name, reader_names())]
    cls = import_target(target, "reader") if isinstance(target, str) else target
    return cls()
