"""Load a dataset as harmonised windows, through a cache of prepared windows.

The cache key covers the reader (name and version), the window configuration and the
source files (relative path, size and modification time), so any change to one of them
prepares the dataset again; an unchanged dataset loads from one .npz in well under a second.

Integrity: the .json beside each .npz holds the .npz's SHA-256. A cache entry that is
damaged (truncated, overwritten, its .json missing) is named on stderr and prepared again.
Processes preparing the same entry at once take turns (a file lock; the second one reads
what the first wrote); each writes under a temporary name of its own, removed on failure
(a full disk leaves nothing half-written behind).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedhar.data import paths
from fedhar.data.harmonise import WindowConfig, harmonise
from fedhar.data.labels import ACTIVITIES, ACTIVITY_ID
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


def _save(path: Path, ws: WindowSet, report: PrepareReport, meta: dict) -> None:
    """Write the .npz under a unique temporary name, then its .json (with the SHA-256), then
    rename the .npz into place: a half-written entry is never read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, x=ws.x, y=ws.y, subject=ws.subject, dataset=ws.dataset)
    data = buffer.getvalue()
    info = {"report": report.to_dict(), "sha256": hashlib.sha256(data).hexdigest(), **meta}
    try:
        _write_atomic(path.with_suffix(".json"), json.dumps(info, indent=1).encode())
        _write_atomic(path, data)
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
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise DamagedCache(f"{path}: {Path(e.filename).name} is missing") from None
    except ValueError:
        raise DamagedCache(f"{path}: {meta_path.name} is not valid JSON") from None
    if not isinstance(meta, dict) or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise DamagedCache(f"{path}: does not match the checksum in {meta_path.name}")
    with np.load(io.BytesIO(data)) as z:
        ws = WindowSet(z["x"], z["y"], z["subject"], z["dataset"])
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

    def shown(items, what):
        if not progress:
            return items
        from tqdm import tqdm

        return tqdm(items, desc=f"preparing {what}", unit=" recordings", file=sys.stderr, leave=False)

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
            parts = []
            for domain, recs in synth.generate_recordings(cfg):
                parts.append(harmonise(shown(recs, domain), window, domain, report))
            ws = WindowSet.concat(parts)
            report.windows = len(ws)
            return ws, report

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
            ws = harmonise(shown(reader.read(root, report), name), window, name, report)
            return ws, report

    if not cache:
        ws, report = prepare()
        return Prepared(ws, report, root, None, False, time.perf_counter() - t0)
    cache_file = paths.window_cache_dir() / f"{name}-{_cache_key(key_parts)}.npz"
    found = None if rebuild else _cached(cache_file)
    if found is None:
        with cache_lock(cache_file):  # another process may be preparing the same entry
            found = None if rebuild else _cached(cache_file)
            if found is None:
                ws, report = prepare()
                _save(cache_file, ws, report, {"key": key_parts})
                return Prepared(ws, report, root, cache_file, False, time.perf_counter() - t0)
    ws, report = found
    return Prepared(ws, report, root, cache_file, True, time.perf_counter() - t0)


def cache_lock(path: Path):
    """An exclusive lock beside ``path`` (a cache entry being made), held by one process at a time."""
    from filelock import FileLock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FedharError(f"{path.parent}: cannot create the cache folder ({e.strerror})") from None
    return FileLock(str(path) + ".lock")
