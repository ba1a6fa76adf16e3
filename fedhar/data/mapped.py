"""Windows read from the cache file on demand instead of held in memory.

A federation of 10,000 synthetic subjects holds about 4 GiB of windows; a process needs
only the few clients it trains or evaluates at a time. ``MappedRows`` stands for the
window array of a cache entry: indexing it maps the file, copies the rows asked for into
an ordinary array and unmaps the file again, so a process never holds more than those
rows (nor counts the file's pages in its resident memory afterwards).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

#: windows larger than this stay in their cache file and are read on demand
MAP_ABOVE_BYTES = 256 * 2**20
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # a zip member's local header (PKWARE APPNOTE 4.3.7)


class MappedRows:
    """A read-only C-ordered array stored in ``path`` at byte ``offset``, read row by row.

    ``rows[index]`` is an in-memory copy of those rows (any numpy index along the first
    axis); ``np.asarray(rows)`` reads all of them.
    """

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.offset, self.dtype, self.shape = Path(path), offset, np.dtype(dtype), tuple(shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, index) -> np.ndarray:
        mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
        return np.array(mapped[index])  # a copy: the file is unmapped when ``mapped`` goes

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)

    def __repr__(self) -> str:
        return f"MappedRows({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def npz_member(path: Path, npz, name: str):
    """Member ``name`` of the open .npz ``npz`` (read from ``path``): a ``MappedRows`` when it is
    larger than MAP_ABOVE_BYTES and stored uncompressed (as ``np.savez`` and the window cache
    write it: the .npy bytes lie in the file as they are), else the array itself."""
    info = npz.zip.getinfo(f"{name}.npy")
    if info.file_size <= MAP_ABOVE_BYTES or info.compress_type != zipfile.ZIP_STORED:
        return npz[name]
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        name_length, extra_length = fields[-2:]
        f.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if fortran_order or dtype.hasobject or not shape:
        return npz[name]
    return MappedRows(path, offset, dtype, shape)
