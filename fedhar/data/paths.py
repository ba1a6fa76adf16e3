"""Where data and caches live.

Data directories are searched in this order (the first that holds a dataset wins):
  1. an explicit ``--data-dir`` (CLI) / ``data_dir=`` (API),
  2. ``$FEDHAR_DATA_DIR`` (several joined by ``os.pathsep``),
  3. ``./data`` in the working directory,
  4. ``../shared/data`` beside the fedhar checkout (the shared real data on dev machines),
  5. the download directory, ``$FEDHAR_CACHE_DIR/data`` (default ``~/.cache/fedhar/data``).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    return Path(os.environ.get("FEDHAR_CACHE_DIR") or Path.home() / ".cache" / "fedhar")


def window_cache_dir() -> Path:
    return cache_root() / "windows"


def download_dir() -> Path:
    return cache_root() / "data"


def data_dirs(explicit: str | Path | None = None) -> list[tuple[Path, str]]:
    """Candidate data directories with the reason each is searched, in search order."""
    out: list[tuple[Path, str]] = []
    if explicit:
        out.append((Path(explicit), "--data-dir"))
    for part in filter(None, os.environ.get("FEDHAR_DATA_DIR", "").split(os.pathsep)):
        out.append((Path(part), "$FEDHAR_DATA_DIR"))
    out.append((Path.cwd() / "data", "./data"))
    out.append((PROJECT_ROOT.parent / "shared" / "data", "shared data beside the checkout"))
    out.append((download_dir(), "download directory"))
    seen, unique = set(), []
    for path, why in out:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, why))
    return unique
