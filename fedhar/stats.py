"""Seed statistics for results tables: mean ± std, paired differences and what they can say.

Arms compared on the same seeds share their splits (the seed draws the subjects), so the
difference is taken per seed. For those paired differences d_1..d_n:

* the 95% interval of the mean is Student's t: mean ± t(0.975, n - 1) * sd / sqrt(n);
* the difference test is the paired t test (two-sided);
* the equivalence test is TOST (two one-sided t tests) against a stated margin ±m
  (default ±1 point): equivalent when both one-sided p-values are below alpha, i.e. the
  90% interval lies inside (-m, +m);
* within one table (one family of comparisons) both sets of p-values are Holm-corrected
  (``holm``), so that a table of 11 comparisons does not find a "difference" by chance;
* the minimum detectable difference (MDD) is the true mean difference the paired t test
  would detect with 80% power at alpha .05, given n and the observed sd of the differences
  (in a Holm family of m comparisons: at alpha .05 / m, the level of Holm's first step).

The verdict of a comparison is then one of "difference", "equivalent within ±m" or
"inconclusive (MDD x)": a non-significant test is never read as "the same".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
MARGIN = 0.01  # the equivalence margin in the metric's units: ±1 point of accuracy


def mean_std(values: pd.Series, digits: int = 3) -> str:
    """"0.951 ± 0.015 (n=5)"; a single value has no spread."""
    values = values.dropna()
    if len(values) == 0:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f} (n=1)"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f} (n={len(values)})"


def tost_p(mean: float, sd: float, n: int, margin: float) -> float:
    """TOST p-value for H0: |true mean| >= margin (the larger of the two one-sided p-values)."""
    if n < 2:
        return math.nan
    if sd == 0:
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(n)
    p_low = stats.t.sf((mean + margin) / se, n - 1)  # H0: mean <= -margin
    p_high = stats.t.cdf((mean - margin) / se, n - 1)  # H0: mean >= +margin
    return float(max(p_low, p_high))


def minimum_detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true mean paired difference a two-sided paired t test on n pairs detects with
    ``power``: solves P(|T| > t_crit | noncentrality delta sqrt(n) / sd) = power for delta."""
    if n < 2:
        return math.nan
    if sd == 0:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(effect: float) -> float:  # effect = delta / sd
        nc = effect * math.sqrt(n)
        wrong_side = stats.nct.cdf(-crit, df, nc)  # negligible for nc > 0; scipy's nct gives nan far out
        return stats.nct.sf(crit, df, nc) + (0.0 if math.isnan(wrong_side) else wrong_side) - power

    high = 1.0
    while shortfall(high) < 0:  # bracket the root (n = 2 needs an effect of about 11.5 sd)
        high *= 2
    effect = optimize.brentq(shortfall, 1e-9, high)
    return float(effect * sd)


@dataclass(frozen=True)
class PairedDifference:
    n: int
    mean: float
    low: float  # 95% interval of the mean paired difference (nan for n < 2)
    high: float
    sd: float = math.nan  # of the per-seed differences
    p: float = math.nan  # paired t test, two-sided; Holm-adjusted after ``holm``
    p_equivalent: float = math.nan  # TOST against ±margin; Holm-adjusted after ``holm``
    margin: float = MARGIN
    mdd: float = math.nan  # minimum detectable difference, 80% power, alpha .05
    adjusted: int = 1  # comparisons in the Holm family (1: not adjusted)
    alpha: float = ALPHA

    def verdict_text(self, scale: float = 100.0) -> str:
        if self.n < 2:
            return "one seed: no test"
        if self.p < self.alpha:
            return "difference"
        if self.p_equivalent < self.alpha:
            return f"equivalent within ±{self.margin * scale:g}"
        return f"inconclusive (MDD {self.mdd * scale:.1f})"

    @property
    def verdict(self) -> str:
        """"difference" / "equivalent within ±1" / "inconclusive (MDD 3.2)", in points."""
        return self.verdict_text()

    def text(self, scale: float = 100.0, unit: str = " pts") -> str:
        """"+1.2 pts [0.4, 2.0] (n=5)" with the values in points (x 100) by default."""
        if self.n == 0:
            return "-"
        if self.n < 2:
            return f"{self.mean * scale:+.1f}{unit} (n=1, no interval)"
        return f"{self.mean * scale:+.1f}{unit} [{self.low * scale:+.1f}, {self.high * scale:+.1f}] (n={self.n})"

    def cell(self) -> str:
        """The table cell: the difference, its interval and the verdict."""
        return self.text() if self.n < 2 else f"{self.text()} ({self.verdict})"


def paired_difference(a: pd.Series, b: pd.Series, margin: float = MARGIN) -> PairedDifference:
    """a - b over the seeds (index) both have: 95% t interval, paired t test, TOST at ±margin, MDD."""
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    d = both["a"] - both["b"]
    n = len(d)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan, margin=margin)
    if n == 1:
        return PairedDifference(1, float(d.iloc[0]), math.nan, math.nan, margin=margin)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    if sd == 0:
        p = 0.0 if mean != 0 else 1.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return PairedDifference(n, mean, mean - half, mean + half, sd, p, tost_p(mean, sd, n, margin), margin,
                            minimum_detectable_difference(sd, n))


def holm_adjust(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan stays nan and does not count in the family)."""
    ok = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(ok)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(ok, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def holm(diffs: list[PairedDifference]) -> list[PairedDifference]:
    """The comparisons of one table, with their difference and equivalence p-values Holm-adjusted
    over the family (the comparisons with n >= 2)."""
    family = sum(d.n >= 2 for d in diffs)
    p = holm_adjust([d.p for d in diffs])
    p_eq = holm_adjust([d.p_equivalent for d in diffs])
    # the MDD at alpha / family (Holm's strictest step, Bonferroni's level): what the table's
    # corrected test is sure to see, so that "inconclusive (MDD x)" never sits beside a mean above x
    return [replace(d, p=p[i], p_equivalent=p_eq[i], adjusted=family,
                    mdd=minimum_detectable_difference(d.sd, d.n, d.alpha / family)) if d.n >= 2 else d
            for i, d in enumerate(diffs)]


VERDICT_NOTE = ("Verdict per comparison (fedhar.stats): \"difference\" when the paired t test rejects no difference, "
                "\"equivalent within ±1\" when TOST rejects a difference of 1 point or more, else \"inconclusive\" with the "
                "minimum detectable difference (MDD: the true difference detected with 80% power for these seeds' spread, at "
                "alpha .05 divided by the table's comparisons); both tests Holm-corrected across the comparisons of the "
                "table (per metric). Intervals: 95%, unadjusted.")
