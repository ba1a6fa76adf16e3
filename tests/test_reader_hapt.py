"""The HAPT reader: fixture folders in the published layout, malformed variants, real data."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from fedhar.data.harmonise import WindowConfig, harmonise
from fedhar.data.labels import ACTIVITY_ID, UNLABELLED
from fedhar.data.readers.hapt import HaptReader, find_experiments, read_table
from fedhar.data.registry import get_reader
from fedhar.data.schema import STANDARD_GRAVITY, PrepareReport
from fedhar.errors import DataFormatError
from tests.fixtures.hapt import default_experiments, shared_data_dir, write_hapt


def read_all(root: Path) -> tuple[list, PrepareReport]:
    report = PrepareReport(dataset="hapt")
    return list(HaptReader().read(root, report)), report


@pytest.fixture
def hapt_root(tmp_path) -> Path:
    return write_hapt(tmp_path / "HAPT Data Set")


# ----------------------------------------------------------------------------- layout


def test_registry_and_locate(tmp_path, hapt_root):
    assert isinstance(get_reader("hapt"), HaptReader)
    reader = HaptReader()
    assert reader.locate(tmp_path) == hapt_root
    assert reader.locate(tmp_path / "nothing-here") is None
    other = tmp_path / "other"
    write_hapt(other / "hapt")
    assert reader.locate(other) == other / "hapt"


def test_source_files_are_labels_and_every_signal_file(hapt_root):
    names = [p.name for p in HaptReader().source_files(hapt_root)]
    assert names[0] == "labels.txt"
    assert sorted(names[1:]) == sorted(
        f"{s}_exp{e:02d}_user{u:02d}.txt"
        for s in ("acc", "gyro")
        for e, u in ((1, 1), (2, 1), (3, 2))
    )


def test_label_map_covers_the_twelve_published_ids():
    label_map = HaptReader.label_map
    assert sorted(label_map) == list(range(1, 13))
    assert label_map[6] == "lying" and label_map[12] == "lie_to_stand"
    assert all(name in ACTIVITY_ID for name in label_map.values())


# ----------------------------------------------------------------------------- values


def test_recordings_units_subjects_and_labels(hapt_root):
    recs, report = read_all(hapt_root)
    expected = default_experiments()
    assert len(recs) == 3
    assert [r.subject for r in recs] == [1, 1, 2]
    assert report.files_read == 7  # labels.txt + 3 x (acc, gyro)
    for rec, exp in zip(recs, expected):
        assert rec.rate == 50.0
        assert rec.signal.shape == (len(exp.acc_g), 6)
        np.testing.assert_allclose(rec.signal[:, :3], exp.acc_g * STANDARD_GRAVITY, rtol=1e-12)
        np.testing.assert_allclose(rec.signal[:, 3:], exp.gyro, rtol=1e-12)
        assert "acc_exp" in rec.source
    labels = recs[0].labels
    assert (labels[:49] == UNLABELLED).all()  # samples 1-49 lie before the first segment
    assert (labels[49:349] == ACTIVITY_ID["standing"]).all()  # segment 50..349, inclusive
    assert (labels[349:449] == ACTIVITY_ID["stand_to_sit"]).all()
    assert (labels[449:649] == ACTIVITY_ID["sitting"]).all()
    assert (labels[649:] == UNLABELLED).all()
    assert (recs[1].labels[:256] == ACTIVITY_ID["walking"]).all()
    assert (recs[2].labels[290:] == ACTIVITY_ID["lie_to_stand"]).all()
    # gravity of ~1 g on x in the fixture comes out in m/s^2
    assert abs(np.median(recs[0].signal[:, 0]) - STANDARD_GRAVITY) < 0.2


def test_harmonised_windows_and_counts(hapt_root):
    report = PrepareReport(dataset="hapt")
    ws = harmonise(HaptReader().read(hapt_root, report), WindowConfig(), "hapt", report)
    # runs: standing 300 -> 3, sitting 200 -> 2, walking 256 -> 3, lying 280 -> 3 windows;
    # the transitions (100, 100, 10 samples) are shorter than a window
    assert ws.class_counts() == {"walking": 3, "sitting": 2, "standing": 3, "lying": 3}
    assert report.recordings == 3 and report.samples_in == 700 + 400 + 300
    assert report.dropped["unlabelled samples"] == 49 + 51 + 44 + 10
    assert report.dropped["samples in activity runs shorter than a window"] == 210
    exp1 = default_experiments()[0]
    first = np.flatnonzero(ws.y == ACTIVITY_ID["standing"])[0]
    np.testing.assert_allclose(ws.x[first, 0], exp1.acc_g[49:177, 0] * STANDARD_GRAVITY, rtol=1e-6)
    assert set(ws.subject.tolist()) == {1, 2}


def test_trailing_blank_line_is_tolerated(hapt_root):
    acc = hapt_root / "RawData" / "acc_exp03_user02.txt"
    acc.write_text(acc.read_text() + "\n")
    recs, _ = read_all(hapt_root)
    assert len(recs[2].labels) == 300


# ----------------------------------------------------------------------------- errors


def replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[lineno - 1] = text
    path.write_text("".join(lines))


def raises_at(root: Path, name: str, line: int | None, match: str) -> DataFormatError:
    with pytest.raises(DataFormatError, match=match) as info:
        read_all(root)
    assert Path(info.value.path).name == name
    assert info.value.line == line
    return info.value


def test_truncated_row(hapt_root):
    replace_line(hapt_root / "RawData" / "acc_exp02_user01.txt", 5, "0.91 -0.11\n")
    raises_at(hapt_root, "acc_exp02_user01.txt", 5, "expected 3 columns, found 2")


def test_file_cut_mid_row(hapt_root):
    path = hapt_root / "RawData" / "gyro_exp03_user02.txt"
    text = path.read_text()
    path.write_text(text[: text.rindex(" ")])  # last line loses its z value and newline
    raises_at(hapt_root, "gyro_exp03_user02.txt", 300, "truncated")


def test_non_numeric_cell(hapt_root):
    replace_line(hapt_root / "RawData" / "gyro_exp01_user01.txt", 7, "0.1 abc 0.3\n")
    raises_at(hapt_root, "gyro_exp01_user01.txt", 7, "not a number: 'abc'")


def test_non_finite_value(hapt_root):
    replace_line(hapt_root / "RawData" / "acc_exp01_user01.txt", 3, "0.1 nan 0.3\n")
    raises_at(hapt_root, "acc_exp01_user01.txt", 3, "non-finite")


def test_blank_line_inside_a_file(hapt_root):
    replace_line(hapt_root / "RawData" / "acc_exp01_user01.txt", 10, "\n")
    raises_at(hapt_root, "acc_exp01_user01.txt", 10, "blank line")


def test_missing_gyro_file(hapt_root):
    (hapt_root / "RawData" / "gyro_exp02_user01.txt").unlink()
    raises_at(hapt_root, "gyro_exp02_user01.txt", None, "missing")


def test_missing_labels_file(hapt_root):
    (hapt_root / "RawData" / "labels.txt").unlink()
    raises_at(hapt_root, "labels.txt", None, "missing")


def test_unknown_activity_id(hapt_root):
    replace_line(hapt_root / "RawData" / "labels.txt", 2, "1 1 13 350 449\n")
    raises_at(hapt_root, "labels.txt", 2, "unknown activity id 13")


def test_non_integer_in_labels(hapt_root):
    replace_line(hapt_root / "RawData" / "labels.txt", 4, "2 1 1 1.5 256\n")
    raises_at(hapt_root, "labels.txt", 4, "not an integer: '1.5'")


def test_acc_gyro_length_mismatch(hapt_root):
    path = hapt_root / "RawData" / "gyro_exp02_user01.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-3]))
    # the truncated file is the one named, not its intact partner
    err = raises_at(hapt_root, "gyro_exp02_user01.txt", None, "397 samples but acc_exp02_user01.txt has 400")
    assert "sample-aligned" in err.message


def test_segment_beyond_its_recording(hapt_root):
    replace_line(hapt_root / "RawData" / "labels.txt", 6, "3 2 12 291 301\n")
    raises_at(hapt_root, "labels.txt", 6, "ends at sample 301 but acc_exp03_user02.txt has 300")


def test_segment_of_a_missing_experiment(hapt_root):
    replace_line(hapt_root / "RawData" / "labels.txt", 1, "9 1 5 50 349\n")
    raises_at(hapt_root, "labels.txt", 1, "experiment 9 has no acc/gyro files")


def test_segment_with_the_wrong_user(hapt_root):
    replace_line(hapt_root / "RawData" / "labels.txt", 5, "3 1 6 11 290\n")
    raises_at(hapt_root, "labels.txt", 5, "belongs to user 2, not 1")


def test_overlapping_segments(hapt_root):
    replace_line(hapt_root / "RawData" / "labels.txt", 2, "1 1 7 300 449\n")
    raises_at(hapt_root, "labels.txt", 2, "overlaps")


def test_read_table_is_fast_path_equal_to_scan(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("1 2 3\n4 5 6\n\n")
    np.testing.assert_array_equal(read_table(path, 3, np.int64), [[1, 2, 3], [4, 5, 6]])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="empty"):
        read_table(empty, 3)


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real():
    data_dir = shared_data_dir()
    reader = HaptReader()
    root = reader.locate(data_dir)
    report = PrepareReport(dataset="hapt")
    t0 = time.perf_counter()
    recs = list(reader.read(root, report))
    ws = harmonise(iter(recs), WindowConfig(), "hapt", report)
    seconds = time.perf_counter() - t0
    return root, recs, ws, report, seconds


def test_real_hapt_dataset_facts(real):
    root, recs, ws, report, seconds = real
    assert report.recordings == 61 == len(recs)
    assert report.samples_in == 1_122_772
    assert report.files_read == 1 + 2 * 61
    assert not report.repairs
    assert len({r.subject for r in recs}) == 30 == len(np.unique(ws.subject))
    assert set(HaptReader.published_test_subjects) <= {r.subject for r in recs}
    experiments = {int(p.name[7:9]) for p in (root / "RawData").glob("acc_exp*")}
    segments = HaptReader().read_segments(
        root / "RawData" / "labels.txt",
        find_experiments(root),
        PrepareReport(dataset="hapt"),
    )
    assert len(experiments) == 61
    assert sum(len(s) for s in segments.values()) == 1214
    assert seconds < 60  # about 1 s on a 2-core CPU


def test_real_hapt_units(real):
    _, recs, _, _, _ = real
    signal = np.concatenate([r.signal for r in recs])
    acc_norm = np.linalg.norm(signal[:, :3], axis=1)
    gyro_norm = np.linalg.norm(signal[:, 3:], axis=1)
    assert 9.5 < np.median(acc_norm) < 10.1  # gravity, in m/s^2
    assert np.median(gyro_norm) < 1.0  # rad/s, mostly still or walking


def test_real_hapt_windows_per_class(real):
    _, _, ws, report, _ = real
    counts = ws.class_counts()
    assert set(counts) == set(HaptReader.label_map.values())  # all 12 activities
    assert counts == {
        "walking": 1722,
        "upstairs": 1544,
        "downstairs": 1407,
        "sitting": 1801,
        "standing": 1979,
        "lying": 1958,
        "stand_to_sit": 70,
        "sit_to_stand": 33,
        "sit_to_lie": 107,
        "lie_to_sit": 85,
        "stand_to_lie": 139,
        "lie_to_stand": 84,
    }
    assert report.windows == len(ws) == 10_929
    assert report.dropped["unlabelled samples"] == 307_158
    assert ws.x.shape[1:] == (6, 128) and ws.x.dtype == np.float32


def test_real_hapt_through_load(real):
    from fedhar.data.loading import load

    root, _, ws, _, _ = real
    prepared = load("hapt", data_dir=root.parent, cache=False)
    assert prepared.root == root
    assert len(prepared.windows) == len(ws)
    assert prepared.report.samples_in == 1_122_772
