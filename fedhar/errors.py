"""Errors that fedhar reports to users without a traceback."""

from __future__ import annotations

from pathlib import Path


class FedharError(Exception):
    """An error the CLI prints as one clear message (no traceback)."""


class DataFormatError(FedharError):
    """A data file is missing, malformed or inconsistent.

    Always names the file, and the 1-based line where there is one.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class DatasetNotFoundError(FedharError):
    """A dataset was asked for but is not present where we looked."""
