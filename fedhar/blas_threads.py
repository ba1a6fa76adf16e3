"""Limit the threads of the OpenBLAS numpy loaded, from inside a running process.

``OPENBLAS_NUM_THREADS`` only counts before numpy is imported, and a Flower ServerApp runs
in a process Flower started with numpy already loaded. There, OpenBLAS's worker threads are
a hazard: its fork handler stops them whenever any thread of the process forks, and Flower's
simulation starts Ray (forking) beside the ServerApp's thread, so a BLAS call in flight can
wait forever for a worker that is gone (OpenBLAS#3111; a by-hand ``flwr run .`` from an
empty cache hung so, spinning in ``exec_blas`` under the synthetic data's complex matmul).
This calls OpenBLAS's own setter (what threadpoolctl does, without the dependency); also a
decorator (``@limited_blas_threads(1)``).
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
