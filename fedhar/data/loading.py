"""Load a dataset as harmonised windows, through a cache of prepared windows.

The cache key covers the reader (name and version), the window configuration and the
source files (relative path, size and modification time), so any change to one of them
prepares the dataset again; an unchanged dataset loads from one .npz in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedhar.data import paths
from fedhar.data.harmonise import WindowConfig, harmonise
from fedhar.data.registry import SYNTHETIC, get_reader
from fedhar.data.schema import PrepareReport, WindowSet
from fedhar.errors import DatasetNotFoundError


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
    searched = [f"  {directory}  ({why})" for directory, why in dirs]
    folders = " or ".join(reader.folder_names)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Looked for a folder {folders} in:\n"
        + "\n".join(searched)
        + f"\nRun `fedhar data download {name}`, or pass --data-dir / set FEDHAR_DATA_DIR."
    )


def _cache_key(parts: dict) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _files_fingerprint(root: Path, files: list[Path]) -> list:
    out = []
    for f in sorted(files):
        st = f.stat()
        out.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
    return out


def _save(path: Path, ws: WindowSet, report: PrepareReport, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=ws.x, y=ws.y, subject=ws.subject, dataset=ws.dataset)
    meta_path = path.with_suffix(".json")
    meta_path.write_text(json.dumps({"report": report.to_dict(), **meta}, indent=1))
    os.replace(tmp, path)  # the .npz appears last: a half-written cache is never read


def _load(path: Path) -> tuple[WindowSet, PrepareReport]:
    with np.load(path) as z:
        ws = WindowSet(z["x"], z["y"], z["subject"], z["dataset"])
    meta = json.loads(path.with_suffix(".json").read_text())
    return ws, PrepareReport.from_dict(meta["report"])


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

        def prepare():
            report = PrepareReport(dataset=name)
            ws = harmonise(shown(reader.read(root, report), name), window, name, report)
            return ws, report

    cache_file = paths.window_cache_dir() / f"{name}-{_cache_key(key_parts)}.npz"
    if cache and not rebuild and cache_file.exists():
        ws, report = _load(cache_file)
        return Prepared(ws, report, root, cache_file, True, time.perf_counter() - t0)
    ws, report = prepare()
    if cache:
        _save(cache_file, ws, report, {"key": key_parts})
    return Prepared(ws, report, root, cache_file if cache else None, False, time.perf_counter() - t0)
