"""The datasets fedhar knows, by name."""

from __future__ import annotations

import importlib

from fedhar.data.readers.base import Reader

SYNTHETIC = "synthetic"

# name -> "module:Class"; imported lazily so one broken reader cannot break the others.
_READERS = {
    "uci-har": "fedhar.data.readers.uci_har:UciHarReader",
    "hapt": "fedhar.data.readers.hapt:HaptReader",
    "motionsense": "fedhar.data.readers.motionsense:MotionSenseReader",
    "hhar": "fedhar.data.readers.hhar:HharReader",
    "realworld": "fedhar.data.readers.realworld:RealWorldReader",
    "pamap2": "fedhar.data.readers.pamap2:Pamap2Reader",
    "usc-had": "fedhar.data.readers.usc_had:UscHadReader",
}

#: the reference paper's five datasets
REFERENCE_FIVE = ("hhar", "motionsense", "realworld", "uci-har", "pamap2")


def reader_names() -> list[str]:
    return list(_READERS)


def dataset_names() -> list[str]:
    return [*_READERS, SYNTHETIC]


def get_reader(name: str) -> Reader:
    from fedhar.options import check_name

    target = _READERS[check_name("dataset", name, reader_names())]
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()
