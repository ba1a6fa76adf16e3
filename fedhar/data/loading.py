"""Load a dataset as harmonised windows, through a cache of prepared windows.

The cache key covers the reader (name and version), the window configuration and the
source files (relative path, size and modification time), so any change to one of them
prepares the dataset again; an unchanged dataset loads from one .npz in well under a second.
The .npz is uncompressed: windows larger than ``fedhar.data.mapped.MAP_ABOVE_BYTES`` are not
read at load but on demand, from the file (a federation of 10,000 subjects).

Integrity: the .json beside each .npz holds the .npz's SHA-256. A cache entry that is
damaged (truncated, overwritten, its .json missing) is named on stderr and prepared again.
Processes preparing the same entry at once take turns (a file lock; the second one reads
what the first wrote); each writes under a temporary name of its own, removed on failure
(a full disk leaves nothing half-written behind).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedhar.data import paths
from fedhar.data.harmonise import AT_WINDOW_RATE, WindowConfig, harmonise
from fedhar.data.labels import ACTIVITIES, ACTIVITY_ID
from fedhar.data.mapped import npz_member
from fedhar.data.registry import SYNTHETIC, get_reader
from fedhar.data.schema import PrepareReport, WindowSet
from fedhar.errors import DataFormatError, DatasetNotFoundError, FedharError


@dataclass
class Prepared:
    windows: WindowSet
    report: PrepareReport
    root: Path | None  # where the raw data was read from (None for synthetic)
    cache_file: Path | None
    from_cache: bool
    seconds: float


def find_dataset(name: str, data_dir: str | Path | None = None) -> Path:
    """The root folder of dataset ``name``; a clear error listing where we looked if absent."""
    reader = get_reader(name)
    dirs = paths.data_dirs(data_dir)
    for locate in (reader.locate, reader.locate_fallback):
        for directory, _ in dirs:
            root = locate(directory)
            if root is not None:
                return root
    searched = "; ".join(f"{directory} ({why}{'' if directory.is_dir() else ': does not exist'})"
                         for directory, why in dirs)
    folders = ", ".join(reader.folder_names)
    only = " (the only place searched when --data-dir is given)" if data_dir else ""
    raise DatasetNotFoundError(
        f"dataset {name!r} not found: no folder {folders} in {searched}{only}. "
        f"Run `fedhar data download {name}`, or pass --data-dir / set FEDHAR_DATA_DIR."
    )


def _cache_key(parts: dict) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _files_fingerprint(root: Path, files: list[Path]) -> list:
    out = []
    for f in sorted(files):
        try:
            st = f.stat()
        except FileNotFoundError:
            raise DataFormatError(f, "file is missing") from None
        out.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
    return out


def _save(path: Path, parts: Iterable[WindowSet], report: PrepareReport, meta: dict) -> None:
    """Write the windows as an uncompressed .npz (what ``np.savez`` writes) under a unique
    temporary name, then its .json (with the SHA-256), then rename the .npz into place: a
    half-written entry is never read. ``parts`` are written as they come (their samples
    through a temporary file), so a dataset larger than memory is never held whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=path.parent) as samples:
            empty = WindowSet.empty()
            n, shape, dtype, columns = 0, empty.x.shape[1:], empty.x.dtype, [(empty.y, empty.subject, empty.dataset)]
            for ws in parts:
                if len(ws) and not n:
                    shape, dtype = ws.x.shape[1:], ws.x.dtype
                np.ascontiguousarray(ws.x, dtype).tofile(samples)
                columns.append((ws.y, ws.subject, ws.dataset))
                n += len(ws)
            report.windows = n
            y, subject, dataset = (np.concatenate([c[i] for c in columns]) for i in range(3))
            samples.seek(0)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w+b") as f:
                    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                        with z.open("x.npy", "w", force_zip64=True) as member:
                            np.lib.format.write_array_header_1_0(member, {
                                "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                "shape": (n, *shape)})
                            shutil.copyfileobj(samples, member, 2**24)
                        for name, column in (("y", y), ("subject", subject), ("dataset", dataset.astype("<U32"))):
                            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                                np.lib.format.write_array(member, column)
                    f.seek(0)
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                info = {"report": report.to_dict(), "sha256": digest, **meta}
                _write_atomic(path.with_suffix(".json"), json.dumps(info, indent=1).encode())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except OSError as e:
        raise FedharError(f"{path}: cannot write the window cache ({e.strerror})") from None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class DamagedCache(Exception):
    """A window cache entry that cannot be trusted (the message says why)."""


def _load(path: Path) -> tuple[WindowSet, PrepareReport]:
    """The entry's windows, checked against their SHA-256; samples larger than
    MAP_ABOVE_BYTES stay in the file and are read on demand (``fedhar.data.mapped``)."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError as e:
        raise DamagedCache(f"{path}: {Path(e.filename).name} is missing") from None
    except ValueError:
        raise DamagedCache(f"{path}: {meta_path.name} is not valid JSON") from None
    if not isinstance(meta, dict) or digest != meta.get("sha256"):
        raise DamagedCache(f"{path}: does not match the checksum in {meta_path.name}")
    with np.load(path) as z:
        ws = WindowSet(npz_member(path, z, "x"), z["y"], z["subject"], z["dataset"])
    return ws, PrepareReport.from_dict(meta["report"])


def load_prepared(path: str | Path, name: str) -> WindowSet:
    """The windows of dataset ``name`` from a prepared cache file (an .npz with its .json, as
    ``load`` writes them), checked against its checksum: a study can run where the raw
    recordings are not (a GPU machine, say), on exactly the windows prepared elsewhere."""
    path = Path(path).expanduser()
    try:
        ws, _ = _load(path)
    except DamagedCache as e:
        raise FedharError(f"prepared windows {e}") from None
    meta = json.loads(path.with_suffix(".json").read_text())
    if meta.get("key", {}).get("dataset") != name:
        raise FedharError(f"{path}: holds {meta.get('key', {}).get('dataset')!r} windows, not {name!r}")
    return ws


def _cached(cache_file: Path) -> tuple[WindowSet, PrepareReport] | None:
    """The cache entry, or None when there is none; a damaged one is named and removed."""
    if not cache_file.exists() and not cache_file.with_suffix(".json").exists():
        return None
    try:
        return _load(cache_file)
    except DamagedCache as e:
        print(f"fedhar: damaged window cache ({e}): preparing it again", file=sys.stderr, flush=True)
        for f in (cache_file, cache_file.with_suffix(".json")):
            f.unlink(missing_ok=True)
        return None


def load(
    name: str,
    data_dir: str | Path | None = None,
    window: WindowConfig = WindowConfig(),
    cache: bool = True,
    synthetic=None,
    progress: bool = False,
    rebuild: bool = False,
) -> Prepared:
    """Harmonised windows of dataset ``name`` (a reader name or "synthetic").

    cache: read and write the window cache; rebuild: prepare again and overwrite the cache.
    progress: show a progress bar on stderr while a dataset is prepared (not on cache hits).
    """

    def shown(items, what, total=None):
        if not progress:
            return items
        from tqdm import tqdm

        return tqdm(items, desc=f"preparing {what}", unit=" recordings", total=total, file=sys.stderr, leave=False)

    t0 = time.perf_counter()
    if name == SYNTHETIC:
        from fedhar.data import synthetic as synth

        cfg = synthetic or synth.SyntheticConfig()
        key_parts = {"dataset": name, "config": cfg.as_dict(), "window": window.as_dict(), "v": synth.VERSION}
        root = None

        def prepare():
            report = PrepareReport(dataset=name)
            report.notes.append("synthetic data (fedhar.data.synthetic), not recordings of people")
            report.notes.extend(
                ", ".join(f"{k} {v}" for k, v in d.items()) for d in synth.domain_summary(cfg)
            )
            subjects = shown(synth.generate_subjects(cfg), name, cfg.n_domains * cfg.subjects_per_domain)
            return (harmonise([rec], window, domain, report) for domain, rec in subjects), report

    else:
        reader = get_reader(name)
        root = find_dataset(name, data_dir)
        files = reader.source_files(root)
        key_parts = {
            "dataset": name,
            "reader_version": reader.version,
            "window": window.as_dict(),
            "root": str(root.resolve()),
            "files": _files_fingerprint(root, files),
        }
        added = {a: ACTIVITY_ID[a] for a in reader.label_map.values() if a is not None and a not in ACTIVITIES}
        if added:  # ids of activities a registered reader brought: they depend on registration order
            key_parts["activity_ids"] = added

        def prepare():
            report = PrepareReport(dataset=name)
            return (harmonise([item], window, name, report) for item in shown(reader.read(root, report), name)), report

    # prepare(): the windows one recording at a time, and the report they fill in
    if not cache:
        parts, report = prepare()
        ws = WindowSet.concat(list(parts))
        report.windows = len(ws)
        return _windowed(Prepared(ws, report, root, None, False, time.perf_counter() - t0), window)
    cache_file = paths.window_cache_dir() / f"{name}-{_cache_key(key_parts)}.npz"
    found = None if rebuild else _cached(cache_file)
    if found is None:
        with cache_lock(cache_file):  # another process may be preparing the same entry
            found = None if rebuild else _cached(cache_file)
            if found is None:
                parts, report = prepare()
                _save(cache_file, parts, report, {"key": key_parts})
                ws, report = _load(cache_file)  # as every later load gives them (large windows stay in the file)
                return _windowed(Prepared(ws, report, root, cache_file, False, time.perf_counter() - t0), window)
    ws, report = found
    return _windowed(Prepared(ws, report, root, cache_file, True, time.perf_counter() - t0), window)


def _windowed(prepared: Prepared, window: WindowConfig) -> Prepared:
    """``prepared``, unless it holds no window at all: then an error naming the data and why
    (every recording shorter than a window, or unlabelled), not an empty table later."""
    if len(prepared.windows):
        return prepared
    report = prepared.report
    dropped = "; ".join(f"{n} {why}{f' (at {window.rate:g} Hz)' if why in AT_WINDOW_RATE else ''}"
                        for why, n in sorted(report.dropped.items())) or "nothing"
    where = prepared.root if prepared.root is not None else report.dataset
    raise DataFormatError(where, f"no {window.length}-sample window at {window.rate:g} Hz ({window.length / window.rate:g} s) "
                                 f"in {report.recordings} recordings of {report.samples_in} samples (at their native "
                                 f"rates): every recording or activity run is shorter than a window, or unlabelled "
                                 f"(dropped: {dropped})")


def cache_lock(path: Path):
    """An exclusive lock beside ``path`` (a cache entry being made), held by one process at a time."""
    from filelock import FileLock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FedharError(f"{path.parent}: cannot create the cache folder ({e.strerror})") from None
    return FileLock(str(path) + ".lock")
