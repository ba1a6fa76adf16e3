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


def test_the_server_app_runs_on_one_openblas_thread(monkeypatch):
    """Flower's simulation starts Ray (forks) beside the ServerApp's thread, and OpenBLAS's fork
    handler stops the workers of any BLAS call in flight (a hang): the ServerApp uses none."""
    from flwr.app import Context, RecordDict

    from simulations import server_app

    class Seen(Exception):
        pass

    def claim(*args):
        raise Seen(blas_threads())

    if not blas_threads():
        pytest.skip("no OpenBLAS loaded in this process (numpy built against another BLAS)")
    monkeypatch.setattr(server_app, "claim", claim)  # the ServerApp's first step: stop there
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with limited_blas_threads(2):  # as many as a 2-CPU machine's numpy starts with
        with pytest.raises(Seen) as seen:
            server_app.build_server_app()(None, context)
        assert blas_threads() == [2] * len(blas_threads())  # restored after
    assert seen.value.args[0] == [1] * len(blas_threads())
