"""One window and backbone cache for the whole test session.

fedhar's cache is keyed by what made each entry (data, windowing, pretraining settings), so
tests that ask for the same tiny synthetic federation share its windows and backbone instead of
preparing them again per module or per test. A test that needs an empty or damaged cache
still makes its own (``monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))``).
The suite never writes to the user's ~/.cache/fedhar."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LONG_RECORD = "results/long_tests/output.txt"


def pytest_collection_modifyitems(config, items) -> None:
    """Checks of over 2 minutes each (``@pytest.mark.long``) run only with FEDHAR_LONG_TESTS=1;
    their last run's output is committed (``LONG_RECORD``, made by results/long_tests/run.sh)."""
    if os.environ.get("FEDHAR_LONG_TESTS"):
        return
    skip = pytest.mark.skip(reason=f"over 2 min: FEDHAR_LONG_TESTS=1 runs it; last run: {LONG_RECORD}")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """FEDHAR_CACHE_DIR for every test, module and subprocess of the session."""
    path = tmp_path_factory.mktemp("fedhar-cache", numbered=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDHAR_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def reference_cache(session_cache) -> Path:
    """The session cache filled first with the reference federations' entries (the tiny
    synthetic windows and backbones most federation tests use), all written to disk before any
    run reads them, so runs read the same bytes whatever the engine (tests/test_fl_inline.py)."""
    from tests import reference_runs

    reference_runs.fill_cache(session_cache)
    return session_cache
