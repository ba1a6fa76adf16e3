"""Limit the threads of the OpenBLAS numpy loaded, from inside a running process.

``OPENBLAS_NUM_THREADS`` only counts before numpy is imported, and a Flower ServerApp runs
in a process Flower started with numpy already loaded. Idle OpenBLAS threads spin-wait;
beside the simulation's client processes on a small machine that starves everything (a
by-hand ``flwr run .`` from a cold cache seemed to hang while the ServerApp pretrained).
This calls OpenBLAS's own setter (what threadpoolctl does, without the dependency).
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from pathlib import Path

_PREFIXES = ("scipy_openblas_", "openblas_")  # numpy's wheels: scipy_openblas..._64_, older: plain
_SUFFIXES = ("64_", "")


def _libraries() -> list[ctypes.CDLL]:
    maps = Path("/proc/self/maps")
    if not maps.exists():  # not Linux: nothing found, nothing limited
        return []
    paths = sorted({line.split()[-1] for line in maps.read_text().splitlines()
                    if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    return [ctypes.CDLL(p) for p in paths]


def _call(lib: ctypes.CDLL, name: str, *args):
    for prefix in _PREFIXES:
        for suffix in _SUFFIXES:
            fn = getattr(lib, f"{prefix}{name}{suffix}", None)
            if fn is not None:
                return fn(*args)
    return None


def blas_threads() -> list[int]:
    """The thread count of every OpenBLAS loaded in this process."""
    return [n for n in (_call(lib, "get_num_threads") for lib in _libraries()) if n is not None]


@contextmanager
def limited_blas_threads(n: int = 1):
    """OpenBLAS limited to ``n`` threads inside the block, restored after it."""
    libs = _libraries()
    before = [_call(lib, "get_num_threads") for lib in libs]
    for lib in libs:
        _call(lib, "set_num_threads", int(n))
    try:
        yield
    finally:
        for lib, old in zip(libs, before):
            if old is not None:
                _call(lib, "set_num_threads", int(old))
