"""MotionSense reader: layout, units, iOS -> Android sign, labels, subjects, malformed files."""

from pathlib import Path

import numpy as np
import pytest

from fedhar.data.harmonise import WindowConfig, harmonise
from fedhar.data.labels import ACTIVITY_ID
from fedhar.data.readers.motionsense import MotionSenseReader
from fedhar.data.schema import STANDARD_GRAVITY, PrepareReport
from fedhar.errors import DataFormatError
from tests.fixtures.motionsense import HEADER, device_motion_csv, write_motionsense


def read_all(root):
    report = PrepareReport("motionsense")
    recs = list(MotionSenseReader().read(root, report))
    return recs, report


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "motionsense"
    written = write_motionsense(root, subjects=(1, 7), n=300)
    return root, written


def test_reads_every_file_with_labels_subjects_and_rate(tree):
    root, written = tree
    recs, report = read_all(root)
    assert len(recs) == len(written) == 12  # 6 activities x 2 subjects
    assert report.files_read == 12
    assert {r.subject for r in recs} == {1, 7}
    assert all(r.rate == 50.0 and r.signal.shape == (300, 6) for r in recs)
    by_source = {Path(r.source).parent.name.split("_")[0]: set() for r in recs}
    for r in recs:
        by_source[Path(r.source).parent.name.split("_")[0]].add(int(r.labels[0]))
        assert (r.labels == r.labels[0]).all()
    assert by_source == {
        "dws": {ACTIVITY_ID["downstairs"]},
        "ups": {ACTIVITY_ID["upstairs"]},
        "sit": {ACTIVITY_ID["sitting"]},
        "std": {ACTIVITY_ID["standing"]},
        "wlk": {ACTIVITY_ID["walking"]},
        "jog": {ACTIVITY_ID["running"]},
    }


def test_units_and_android_sign_convention(tree):
    root, written = tree
    recs, report = read_all(root)
    for r in recs:
        rows = written[Path(r.source)]
        gravity, rotation, user_acc = rows[:, 3:6], rows[:, 6:9], rows[:, 9:12]
        np.testing.assert_allclose(r.signal[:, :3], -(gravity + user_acc) * STANDARD_GRAVITY)
        np.testing.assert_allclose(r.signal[:, 3:], rotation)
    assert any("Android" in n for n in report.notes)


def test_phone_lying_face_up_reads_plus_g_on_z(tmp_path):
    # Core Motion: face up -> gravity (0, 0, -1) g; Android (and our output): +9.81 on z
    folder = tmp_path / "A_DeviceMotion_data" / "sit_5"
    folder.mkdir(parents=True)
    rows = np.zeros((4, 12))
    rows[:, 5] = -1.0
    rows[:, 8] = 0.5  # rotation about z, rad/s, unchanged
    (folder / "sub_3.csv").write_text(device_motion_csv(rows))
    (rec,), _ = read_all(tmp_path)
    np.testing.assert_allclose(rec.signal[0], [0, 0, STANDARD_GRAVITY, 0, 0, 0.5])
    assert rec.subject == 3 and rec.labels[0] == ACTIVITY_ID["sitting"]


def test_locate_single_and_doubled_unpack(tmp_path):
    reader = MotionSenseReader()
    write_motionsense(tmp_path / "motion-sense", subjects=(1,), n=10, doubled=True)
    root = reader.locate(tmp_path)
    assert root == tmp_path / "motion-sense"
    assert len(reader.source_files(root)) == 6
    assert reader.locate(tmp_path / "nothing") is None
    write_motionsense(tmp_path / "other" / "motionsense", subjects=(2,), n=10)
    assert reader.locate(tmp_path / "other") == tmp_path / "other" / "motionsense"


def test_harmonised_windows_keep_label_and_subject(tmp_path):
    write_motionsense(tmp_path, subjects=(4,), trials={"jog": (9,)}, n=400)
    report = PrepareReport("motionsense")
    ws = harmonise(MotionSenseReader().read(tmp_path, report), WindowConfig(), "motionsense", report)
    assert len(ws) == 1 + (400 - 128) // 64
    assert set(ws.y.tolist()) == {ACTIVITY_ID["running"]}
    assert set(ws.subject.tolist()) == {4}


# --------------------------------------------------------------------------- malformed


def _one_file(tmp_path, text):
    folder = tmp_path / "A_DeviceMotion_data" / "wlk_7"
    folder.mkdir(parents=True)
    path = folder / "sub_1.csv"
    path.write_text(text)
    return path


def _good_lines(n=5):
    return device_motion_csv(np.round(np.random.default_rng(0).normal(size=(n, 12)), 6)).splitlines()


def test_truncated_row_names_file_and_line(tmp_path):
    lines = _good_lines()
    lines[3] = ",".join(lines[3].split(",")[:7])
    path = _one_file(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_all(tmp_path)
    assert err.value.path == str(path) and err.value.line == 4
    assert "truncated" in str(err.value)


def test_truncated_last_line_names_it(tmp_path):
    lines = _good_lines()
    path = _one_file(tmp_path, "\n".join(lines) + "\n5,0.1,0.2")  # cut mid-write
    with pytest.raises(DataFormatError) as err:
        read_all(tmp_path)
    assert err.value.path == str(path) and err.value.line == 7


def test_non_numeric_cell_names_file_line_and_column(tmp_path):
    lines = _good_lines()
    cells = lines[2].split(",")
    cells[11] = "abc"
    lines[2] = ",".join(cells)
    path = _one_file(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_all(tmp_path)
    assert err.value.path == str(path) and err.value.line == 3
    assert "userAcceleration.y" in str(err.value) and "'abc'" in str(err.value)


def test_empty_cell_is_an_error(tmp_path):
    lines = _good_lines()
    cells = lines[5].split(",")
    cells[4] = ""
    lines[5] = ",".join(cells)
    _one_file(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_all(tmp_path)
    assert err.value.line == 6


def test_extra_cell_is_an_error(tmp_path):
    lines = _good_lines()
    lines[1] += ",1.0"
    _one_file(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_all(tmp_path)
    assert err.value.line == 2


def test_wrong_header_is_an_error(tmp_path):
    lines = _good_lines()
    lines[0] = lines[0].replace("gravity.x,gravity.y", "gravity.y,gravity.x")
    path = _one_file(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_all(tmp_path)
    assert err.value.path == str(path) and err.value.line == 1


def test_header_only_file_is_skipped_and_counted(tmp_path):
    _one_file(tmp_path, HEADER + "\n")
    recs, report = read_all(tmp_path)
    assert recs == [] and report.files_read == 1
    assert report.dropped["files with a header but no rows, files"] == 1


def test_unknown_activity_folder_names_the_folder(tmp_path):
    write_motionsense(tmp_path, subjects=(1,), n=5)
    bad = tmp_path / "A_DeviceMotion_data" / "swm_3"
    bad.mkdir()
    with pytest.raises(DataFormatError) as err:
        read_all(tmp_path)
    assert err.value.path == str(bad) and "swm" in str(err.value)


def test_unexpected_file_name_is_an_error(tmp_path):
    write_motionsense(tmp_path, subjects=(1,), n=5)
    bad = tmp_path / "A_DeviceMotion_data" / "dws_1" / "subject1.csv"
    bad.write_text(HEADER + "\n")
    with pytest.raises(DataFormatError) as err:
        MotionSenseReader().source_files(tmp_path)
    assert err.value.path == str(bad)


def test_missing_data_folder_is_an_error(tmp_path):
    with pytest.raises(DataFormatError) as err:
        read_all(tmp_path)
    assert "A_DeviceMotion_data" in err.value.path
