"""Where data and caches live.

An explicit ``--data-dir`` (CLI) / ``data_dir=`` (API) is the only place searched: a
dataset missing there is an error naming it, never a silent fallback to another copy.
Without one, data directories are searched in this order (the first that holds a dataset wins):
  1. ``$FEDHAR_DATA_DIR`` (several joined by ``os.pathsep``),
  2. ``./data`` in the working directory,
  3. ``../shared/data`` beside the fedhar checkout (the shared real data on dev machines),
  4. the download directory, ``$FEDHAR_CACHE_DIR/data`` (default ``~/.cache/fedhar/data``).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    root = Path(os.environ.get("FEDHAR_CACHE_DIR") or Path.home() / ".cache" / "fedhar")
    if root.exists() and not root.is_dir():
        from fedhar.errors import FedharError

        raise FedharError(f"FEDHAR_CACHE_DIR={root} is a file, not a directory")
    return root


def window_cache_dir() -> Path:
    return cache_root() / "windows"


def download_dir() -> Path:
    return cache_root() / "data"


def data_dirs(explicit: str | Path | None = None) -> list[tuple[Path, str]]:
    """Candidate data directories with the reason each is searched, in search order."""
    if explicit:
        return [(Path(explicit), "--data-dir")]
    out: list[tuple[Path, str]] = []
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
