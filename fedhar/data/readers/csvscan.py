"""Finding the first bad line of a CSV that a fast vectorised parse refused.

Readers parse with pandas first (fast); only when that fails do they call
``raise_first_bad_line`` to re-read line by line and name the exact line for the user.
"""

from __future__ import annotations

import math

from fedhar.errors import DataFormatError


def raise_first_bad_line(data: bytes, where: str, columns: tuple[str, ...], header_lines: int = 1,
                         numeric: tuple[str, ...] | None = None, integers: tuple[str, ...] = ()):
    """Raise a DataFormatError naming the first line with the wrong cell count or a
    non-numeric / non-finite cell; ``columns`` names every expected cell, ``numeric`` those
    that must be numbers (default: all), ``integers`` those of them that must be integers."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    n = len(columns)
    must_be_numbers = set(columns if numeric is None else numeric)
    for lineno, line in enumerate(lines[header_lines:], start=header_lines + 1):
        if not line:
            continue  # pandas skips empty lines too
        cells = line.split(",")
        if len(cells) != n:
            hint = " (truncated row?)" if len(cells) < n else ""
            raise DataFormatError(where, f"expected {n} comma-separated cells, found {len(cells)}{hint}", line=lineno)
        for name, cell in zip(columns, cells):
            if name not in must_be_numbers:
                continue
            if name in integers:
                try:
                    int(cell)
                except ValueError:
                    raise DataFormatError(where, f"not an integer in column {name}: {cell!r}", line=lineno) from None
                continue
            try:
                value = float(cell)
            except ValueError:
                raise DataFormatError(where, f"not a number in column {name}: {cell!r}", line=lineno) from None
            if not math.isfinite(value):
                raise DataFormatError(where, f"non-finite value in column {name}: {cell!r}", line=lineno)
    raise DataFormatError(where, "could not be parsed (no single bad line found)")
