"""fedhar.stats against statsmodels: TOST, Holm, the minimum detectable difference, the verdicts."""

import math

import numpy as np
import pandas as pd
import pytest

from fedhar.stats import holm, holm_adjust, minimum_detectable_difference, paired_difference, tost_p

statsmodels = pytest.importorskip("statsmodels")  # the dev extra (pyproject)


@pytest.mark.parametrize("shift", [0.0, 0.004, 0.012, -0.02])
def test_tost_is_statsmodels_ttost_paired(shift):
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(3)
    b = rng.normal(0.9, 0.02, 5)
    a = b + shift + rng.normal(0, 0.004, 5)
    d = paired_difference(pd.Series(a), pd.Series(b), margin=0.01)
    p, _, _ = ttost_paired(a, b, -0.01, 0.01)
    assert d.p_equivalent == pytest.approx(p, rel=1e-9)


def test_holm_is_statsmodels_multipletests():
    from statsmodels.stats.multitest import multipletests

    p = [0.0076, 0.04, 0.2, 0.011, 0.5, 0.03, 0.049, 0.9, 0.001, 0.02, 0.3]
    assert holm_adjust(p) == pytest.approx(list(multipletests(p, method="holm")[1]), rel=1e-12)
    assert math.isnan(holm_adjust([0.01, math.nan])[1]) and holm_adjust([0.01, math.nan])[0] == 0.01  # nan: no test


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_minimum_detectable_difference_is_statsmodels_power_solution(n):
    from statsmodels.stats.power import TTestPower

    effect = TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="two-sided")
    assert minimum_detectable_difference(0.02, n) == pytest.approx(effect * 0.02, rel=1e-4)


def test_the_fedsa_case_a_difference_alone_is_inconclusive_among_eleven():
    """p = 0.0076 at n = 3: a difference alone; Holm-corrected among 11 comparisons it is not."""
    fedsa = paired_difference(pd.Series([0.85, 0.87, 0.90]), pd.Series([0.92, 0.93, 0.95]))
    assert fedsa.p < 0.05 and fedsa.verdict == "difference"
    near_zero = [paired_difference(pd.Series([0.90 + i / 1000, 0.92, 0.95]), pd.Series([0.90, 0.93, 0.94]))
                 for i in range(10)]
    family = holm([fedsa, *near_zero])
    assert family[0].p == pytest.approx(min(1.0, 11 * fedsa.p)) and family[0].verdict.startswith("inconclusive (MDD ")
    assert family[0].mdd > fedsa.mdd  # the corrected test needs a larger difference to see one


def test_verdicts_say_difference_equivalence_or_the_mdd():
    base = pd.Series([0.90, 0.92, 0.94, 0.91, 0.93])
    assert paired_difference(base + 0.03 + np.array([0, 1, -1, 0, 1]) / 1000, base).verdict == "difference"
    same = paired_difference(base + np.array([1, -1, 2, -2, 0]) / 1000, base)
    assert same.verdict == "equivalent within ±1" and same.p_equivalent == tost_p(same.mean, same.sd, 5, 0.01)
    noisy = paired_difference(base + np.array([3, -4, 5, -2, 1]) / 100, base)
    assert noisy.verdict == f"inconclusive (MDD {noisy.mdd * 100:.1f})" and noisy.mdd > 0.01
    assert paired_difference(base.iloc[:1], base.iloc[:1]).verdict == "one seed: no test"
