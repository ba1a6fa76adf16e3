"""OpenBLAS's threads can be limited inside a running process and are restored after."""

import numpy as np  # noqa: F401 (loads OpenBLAS)
import pytest

from fedhar.blas_threads import blas_threads, limited_blas_threads


def test_limited_blas_threads_limits_and_restores():
    before = blas_threads()
    if not before:
        pytest.skip("no OpenBLAS loaded in this process (numpy built against another BLAS)")
    with limited_blas_threads(1):
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before
