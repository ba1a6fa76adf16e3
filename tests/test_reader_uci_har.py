"""The UCI-HAR reader: the published windowed form, the form derived from HAPT, real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedhar.data.harmonise import WindowConfig, harmonise
from fedhar.data.labels import ACTIVITY_ID, UNLABELLED
from fedhar.data.loading import find_dataset
from fedhar.data.readers.hapt import HaptReader
from fedhar.data.readers.uci_har import TRANSITIONS_DROPPED, UciHarReader
from fedhar.data.registry import get_reader
from fedhar.data.schema import STANDARD_GRAVITY, PrepareReport, Recording, WindowSet
from fedhar.errors import DataFormatError, FedharError
from tests.fixtures.hapt import shared_data_dir, write_hapt
from tests.fixtures.uci_har import default_splits, format_value, write_uci_har

SIX = {"walking", "upstairs", "downstairs", "sitting", "standing", "lying"}


def read_all(root: Path) -> tuple[list, PrepareReport]:
    report = PrepareReport(dataset="uci-har")
    return list(UciHarReader().read(root, report)), report


@pytest.fixture
def uci_root(tmp_path) -> Path:
    return write_uci_har(tmp_path / "UCI HAR Dataset")


# ----------------------------------------------------------------------------- layout


def test_fixture_numbers_look_like_the_published_files():
    assert format_value(1.012817) == "  1.0128170e+000"
    assert format_value(-0.1232167) == " -1.2321670e-001"


def test_registry_and_locate_published(tmp_path, uci_root):
    reader = get_reader("uci-har")
    assert isinstance(reader, UciHarReader)
    assert reader.locate(tmp_path) == uci_root
    assert reader.looks_like_root(uci_root)
    nested = write_uci_har(tmp_path / "elsewhere" / "uci-har" / "UCI HAR Dataset")
    assert reader.locate(tmp_path / "elsewhere") == nested
    assert reader.locate(tmp_path / "nothing-here") is None


def test_published_form_wins_over_hapt(tmp_path, uci_root, monkeypatch):
    write_hapt(tmp_path / "hapt")
    assert UciHarReader().locate(tmp_path) == uci_root
    # also when HAPT sits in a data dir searched before the published form
    first = tmp_path / "first"
    write_hapt(first / "hapt")
    monkeypatch.setenv("FEDHAR_DATA_DIR", os.pathsep.join([str(first), str(tmp_path)]))
    assert find_dataset("uci-har") == uci_root


def test_falls_back_to_hapt(tmp_path):
    hapt_root = write_hapt(tmp_path / "hapt")
    reader = UciHarReader()
    assert reader.locate(tmp_path) is None
    assert reader.locate_fallback(tmp_path) == hapt_root
    assert find_dataset("uci-har", data_dir=tmp_path) == hapt_root
    assert reader.looks_like_root(hapt_root)
    assert reader.source_files(hapt_root) == HaptReader().source_files(hapt_root)


def test_source_files_of_published_form(uci_root):
    names = sorted(p.name for p in UciHarReader().source_files(uci_root))
    assert len(names) == 16
    assert "total_acc_x_train.txt" in names and "body_gyro_z_test.txt" in names
    assert "y_test.txt" in names and "subject_train.txt" in names
    assert not any(n.startswith(("body_acc", "X_")) for n in names)  # not read


# ----------------------------------------------------------------------------- published


def test_published_windows_values_labels_subjects(uci_root):
    parts, report = read_all(uci_root)
    expected = default_splits()
    assert [len(p) for p in parts] == [5, 3]
    assert report.files_read == 16
    for ws, split in zip(parts, ("train", "test")):
        data = expected[split]
        assert isinstance(ws, WindowSet)
        assert ws.x.shape == (len(data.y), 6, 128) and ws.x.dtype == np.float32
        # files hold 8 significant digits; float32 keeps about 7
        acc = data.total_acc_g * STANDARD_GRAVITY
        np.testing.assert_allclose(ws.x[:, :3], acc, rtol=2e-7, atol=1e-6)
        np.testing.assert_allclose(ws.x[:, 3:], data.body_gyro, rtol=2e-7, atol=1e-6)
        assert ws.subject.tolist() == data.subject.tolist()
        assert set(ws.dataset.tolist()) == {"uci-har"}
    train_names = ("standing", "standing", "walking", "lying", "upstairs")
    assert parts[0].y.tolist() == [ACTIVITY_ID[n] for n in train_names]
    assert parts[1].y.tolist() == [ACTIVITY_ID[n] for n in ("sitting", "downstairs", "walking")]


def test_published_windows_pass_through_harmonise(uci_root):
    report = PrepareReport(dataset="uci-har")
    ws = harmonise(UciHarReader().read(uci_root, report), WindowConfig(), "uci-har", report)
    assert len(ws) == report.windows == 8
    with pytest.raises(FedharError, match="published as fixed windows"):
        harmonise(UciHarReader().read(uci_root, report), WindowConfig(step=32), "uci-har", report)


# ----------------------------------------------------------------------------- errors


def signal_file(root: Path, name: str, split: str = "train") -> Path:
    return root / split / "Inertial Signals" / f"{name}_{split}.txt"


def edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    edit(lines)
    path.write_text("".join(lines))


def raises_at(root: Path, name: str, line: int | None, match: str) -> None:
    with pytest.raises(DataFormatError, match=match) as info:
        read_all(root)
    assert Path(info.value.path).name == name
    assert info.value.line == line


def test_signal_file_with_a_row_missing(uci_root):
    edit_lines(signal_file(uci_root, "body_gyro_y"), lambda lines: lines.pop())
    raises_at(uci_root, "body_gyro_y_train.txt", 5, "4 rows but y_train.txt has 5")


def test_subject_file_with_an_extra_row(uci_root):
    edit_lines(uci_root / "test" / "subject_test.txt", lambda lines: lines.append("2\n"))
    raises_at(uci_root, "subject_test.txt", 4, "4 rows but y_test.txt has 3")


def test_truncated_row(uci_root):
    def cut(lines):
        lines[2] = lines[2][:-17] + "\n"  # one value short

    edit_lines(signal_file(uci_root, "total_acc_z"), cut)
    raises_at(uci_root, "total_acc_z_train.txt", 3, "expected 128 columns, found 127")


def test_non_numeric_cell(uci_root):
    def spoil(lines):
        lines[1] = lines[1].replace("e", "x", 1)

    edit_lines(signal_file(uci_root, "total_acc_x", "test"), spoil)
    raises_at(uci_root, "total_acc_x_test.txt", 2, "not a number")


def test_unknown_activity(uci_root):
    edit_lines(uci_root / "test" / "y_test.txt", lambda lines: lines.__setitem__(1, "7\n"))
    raises_at(uci_root, "y_test.txt", 2, "unknown activity id 7")


def test_missing_signal_file(uci_root):
    signal_file(uci_root, "body_gyro_x", "test").unlink()
    raises_at(uci_root, "body_gyro_x_test.txt", None, "missing")


# ----------------------------------------------------------------------------- derived


def test_derived_from_hapt_drops_transitions_and_splits_experiments(tmp_path):
    hapt_root = write_hapt(tmp_path / "hapt")
    recs, report = read_all(hapt_root)
    assert all(isinstance(r, Recording) for r in recs)
    # exp 1 is cut in two at its stand_to_sit; exp 2 and 3 lose a trailing transition
    assert [(r.subject, len(r.labels)) for r in recs] == [(1, 349), (1, 251), (1, 300), (2, 290)]
    assert report.dropped[TRANSITIONS_DROPPED] == 100 + 100 + 10
    assert report.files_read == 7
    assert any("derived from HAPT" in note for note in report.notes)
    six_ids = {ACTIVITY_ID[n] for n in SIX}
    for rec in recs:
        assert set(np.unique(rec.labels).tolist()) <= six_ids | {UNLABELLED}
    # the first piece ends where stand_to_sit began (sample 350, 1-based)
    assert (recs[0].labels[49:] == ACTIVITY_ID["standing"]).all()
    assert (recs[1].labels[:200] == ACTIVITY_ID["sitting"]).all()


def test_derived_windows(tmp_path):
    hapt_root = write_hapt(tmp_path / "hapt")
    report = PrepareReport(dataset="uci-har")
    ws = harmonise(UciHarReader().read(hapt_root, report), WindowConfig(), "uci-har", report)
    assert ws.class_counts() == {"walking": 3, "sitting": 2, "standing": 3, "lying": 3}
    assert report.recordings == 4
    # transitions are counted once, under their own reason, not as unlabelled samples
    assert report.dropped["unlabelled samples"] == 49 + 51 + 44 + 10
    assert "samples in activity runs shorter than a window" not in report.dropped


# ----------------------------------------------------------------------------- real data

# Reference: windows of 128, step 64, cut inside each labelled segment of activities 1-6.
REFERENCE_TRAIN, REFERENCE_TEST = 7415, 2996


@pytest.fixture(scope="module")
def real_derived():
    data_dir = shared_data_dir()
    reader = UciHarReader()
    root = reader.locate(data_dir) or reader.locate_fallback(data_dir)
    if root is None or not HaptReader().looks_like_root(root):
        pytest.skip(f"{data_dir} holds a published UCI HAR Dataset: not the HAPT-derived form")
    report = PrepareReport(dataset="uci-har")
    ws = harmonise(reader.read(root, report), WindowConfig(), "uci-har", report)
    return ws, report


def test_real_derived_uci_har(real_derived):
    ws, report = real_derived
    assert len(np.unique(ws.subject)) == 30
    assert set(ws.class_counts()) == SIX
    test = np.isin(ws.subject, UciHarReader.published_test_subjects)
    assert len(np.unique(ws.subject[test])) == 9 and len(np.unique(ws.subject[~test])) == 21
    n_train, n_test = int((~test).sum()), int(test.sum())
    assert (n_train, n_test) == (7415, 2996)
    assert abs(n_train - REFERENCE_TRAIN) <= 0.01 * REFERENCE_TRAIN
    assert abs(n_test - REFERENCE_TEST) <= 0.01 * REFERENCE_TEST
    assert report.dropped[TRANSITIONS_DROPPED] == 67_208
    assert report.samples_in + report.dropped[TRANSITIONS_DROPPED] == 1_122_772
    assert ws.class_counts() == {
        "walking": 1722,
        "upstairs": 1544,
        "downstairs": 1407,
        "sitting": 1801,
        "standing": 1979,
        "lying": 1958,
    }


def test_real_derived_uci_har_through_load(real_derived):
    from fedhar.data.loading import load

    ws, _ = real_derived
    prepared = load("uci-har", data_dir=shared_data_dir(), cache=False)
    assert len(prepared.windows) == len(ws) == 7415 + 2996
    assert any("derived from HAPT" in note for note in prepared.report.notes)
