"""Finding datasets, the window cache and its invalidation."""

import os
import time

import numpy as np
import pytest

from fedhar.data import loading, registry
from fedhar.errors import DatasetNotFoundError
from tests.fixtures.toy_reader import write_toy


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setitem(registry._READERS, "toy", "tests.fixtures.toy_reader:ToyReader")
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDHAR_DATA_DIR", raising=False)
    data = tmp_path / "data"
    write_toy(data)
    return data


def test_not_found_names_every_place_searched(toy, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        loading.load("toy", data_dir=tmp_path / "elsewhere")
    msg = str(err.value)
    assert str(tmp_path / "elsewhere") in msg and "--data-dir" in msg
    assert "fedhar data download toy" in msg


def test_env_var_data_dir_is_searched(toy, monkeypatch):
    monkeypatch.setenv("FEDHAR_DATA_DIR", str(toy))
    assert loading.find_dataset("toy") == toy / "toy"


def test_second_load_comes_from_cache_and_is_identical(toy):
    first = loading.load("toy", data_dir=toy)
    assert not first.from_cache and first.cache_file.exists()
    assert first.report.files_read == 3 and first.report.recordings == 3
    second = loading.load("toy", data_dir=toy)
    assert second.from_cache and second.seconds < 1.0
    np.testing.assert_array_equal(first.windows.x, second.windows.x)
    np.testing.assert_array_equal(first.windows.subject, second.windows.subject)
    assert second.report.to_dict() == first.report.to_dict()


def test_cache_is_invalidated_by_changed_files_and_window_config(toy):
    first = loading.load("toy", data_dir=toy)
    f = toy / "toy" / "subject_2.csv"
    lines = f.read_text().splitlines()[:300]
    f.write_text("\n".join(lines) + "\n")
    os.utime(f, ns=(time.time_ns(), time.time_ns()))
    changed = loading.load("toy", data_dir=toy)
    assert not changed.from_cache and len(changed.windows) < len(first.windows)
    other = loading.load("toy", data_dir=toy, window=loading.WindowConfig(step=32))
    assert not other.from_cache and len(other.windows) > len(changed.windows)


def test_rebuild_ignores_cache(toy):
    loading.load("toy", data_dir=toy)
    again = loading.load("toy", data_dir=toy, rebuild=True)
    assert not again.from_cache
