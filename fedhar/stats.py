"""Seed statistics for results tables: mean ± std, and paired differences with an interval.

Arms compared on the same seeds share their splits (the seed draws the subjects), so the
difference is taken per seed and its 95% interval is Student's t over the paired
differences: mean ± t(0.975, n - 1) * sd / sqrt(n). An interval that covers zero is
reported as "no measurable difference", whatever the sign of the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats


def mean_std(values: pd.Series, digits: int = 3) -> str:
    """"0.951 ± 0.015 (n=5)"; a single value has no spread."""
    values = values.dropna()
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f} (n=1)"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f} (n={len(values)})"


@dataclass(frozen=True)
class PairedDifference:
    n: int
    mean: float
    low: float  # 95% interval of the mean paired difference (nan for n < 2)
    high: float

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return "one seed: no interval"
        if self.low <= 0 <= self.high:
            return "no measurable difference"
        return "higher" if self.mean > 0 else "lower"

    def text(self, scale: float = 100.0, unit: str = " pts") -> str:
        """"+1.2 pts [0.4, 2.0] (n=5)" with the values in points (x 100) by default."""
        if self.n == 0:
            return "-"
        if self.n < 2:
            return f"{self.mean * scale:+.1f}{unit} (n=1, no interval)"
        return f"{self.mean * scale:+.1f}{unit} [{self.low * scale:+.1f}, {self.high * scale:+.1f}] (n={self.n})"


def paired_difference(a: pd.Series, b: pd.Series) -> PairedDifference:
    """a - b over the seeds (index) both have; 95% t interval."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    d = both["a"] - both["b"]
    n = len(d)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan)
    if n == 1:
        return PairedDifference(1, float(d.iloc[0]), math.nan, math.nan)
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return PairedDifference(n, float(d.mean()), float(d.mean() - half), float(d.mean() + half))
