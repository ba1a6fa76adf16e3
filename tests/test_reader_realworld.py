"""RealWorld (HAR) 2016 reader: zips, sessions, clock alignment, labels, malformed members."""

from pathlib import Path

import numpy as np
import pytest

from fedhar.data.harmonise import WindowConfig, harmonise
from fedhar.data.labels import ACTIVITY_ID
from fedhar.data.readers.realworld import (
    GAPS_KEY,
    PAIRED_BY_TIME_KEY,
    REPEATED_TIME_KEY,
    UNSORTED_KEY,
    RealWorldReader,
    Stream,
    align,
)
from fedhar.data.schema import PrepareReport
from fedhar.errors import DataFormatError
from tests.fixtures.realworld import (
    ACTIVITIES,
    HEADER,
    acc_signal,
    clock,
    gyr_signal,
    member_name,
    sensor_csv,
    session_start,
    write_realworld,
    write_zip,
)

EXPECTED_LABEL = {
    "climbingdown": "downstairs",
    "climbingup": "upstairs",
    "jumping": "jumping",
    "lying": "lying",
    "running": "running",
    "sitting": "sitting",
    "standing": "standing",
    "walking": "walking",
}


def read_all(root):
    report = PrepareReport("realworld")
    recs = list(RealWorldReader().read(root, report))
    return recs, report


def activity_of(rec):
    # source "…/acc_<activity>…_csv.zip:… + …"
    return Path(rec.source.split(":")[0]).name.split("_")[1]


def test_reads_all_probands_and_activities_with_labels(tmp_path):
    root = write_realworld(tmp_path / "realworld2016_dataset", probands=(3, 12))
    recs, report = read_all(root)
    assert len(recs) == 2 * 8
    assert report.files_read == 2 * 8 * 2  # only the waist member of each archive is parsed
    assert {r.subject for r in recs} == {3, 12}
    for rec in recs:
        assert (rec.labels == ACTIVITY_ID[EXPECTED_LABEL[activity_of(rec)]]).all()
        assert rec.rate == 50.0
    assert {activity_of(r) for r in recs} == set(ACTIVITIES)


def test_gyro_clock_offset_and_other_rate_are_interpolated_onto_one_grid(tmp_path):
    # acc: 50 Hz from t0; gyro: 48 Hz from t0 + 7 ms; both linear in time, so exact values known
    root = write_realworld(tmp_path, probands=(1,), seconds=4.0, gyr_rate=48.0, gyr_offset_ms=7)
    recs, report = read_all(root)
    rec = next(r for r in recs if activity_of(r) == "walking")
    t0 = session_start("walking")
    acc_t = clock(t0, 50.0, 4.0)
    gyr_t = clock(t0 + 7, 48.0, 4.0)
    lo, hi = max(acc_t[0], gyr_t[0]), min(acc_t[-1], gyr_t[-1])
    grid = lo + 20.0 * np.arange(int((hi - lo) // 20) + 1)
    assert rec.signal.shape == (len(grid), 6)
    np.testing.assert_allclose(rec.signal[:, :3], acc_signal(grid), atol=1e-7)
    np.testing.assert_allclose(rec.signal[:, 3:], gyr_signal(grid), atol=1e-7)
    # acc sample at t0 (before the gyro starts) and the gyro's last (after acc ends) are dropped
    outside_acc = int(((acc_t < lo) | (acc_t > hi)).sum())
    outside_gyr = int(((gyr_t < lo) | (gyr_t > hi)).sum())
    assert outside_acc == 1 and outside_gyr == 1
    assert report.dropped["accelerometer samples outside the acc/gyro overlap"] == 8 * outside_acc
    assert report.dropped["gyroscope samples outside the acc/gyro overlap"] == 8 * outside_gyr


def test_units_are_kept_m_s2_and_rad_s(tmp_path):
    root = write_realworld(tmp_path, probands=(1,), gyr_offset_ms=0, gyr_rate=50.0)
    recs, _ = read_all(root)
    rec = recs[0]
    assert rec.signal[:, 1].mean() == pytest.approx(9.81, abs=0.2)  # gravity on y, m/s^2
    assert np.abs(rec.signal[:, 3:]).max() < 1.0  # rad/s as written, not converted


def test_gap_longer_than_0_2_s_splits_instead_of_interpolating():
    report = PrepareReport("realworld")
    t_acc = np.concatenate([np.arange(0, 2000, 20), np.arange(2500, 4000, 20)]).astype(float)
    t_gyr = np.arange(5, 4000, 20).astype(float)
    acc = Stream("acc", t_acc, acc_signal(t_acc + 0))
    gyr = Stream("gyr", t_gyr, gyr_signal(t_gyr))
    parts = align(acc, gyr, report)
    assert len(parts) == 2
    (g1, s1), (g2, s2) = parts
    assert g1[0] == 5 and g1[-1] <= 1980 and g2[0] == 2500 and g2[-1] <= 3980
    assert not ((g1 > 1980) & (g1 < 2500)).any()
    np.testing.assert_allclose(s2[:, 3:], gyr_signal(g2), atol=1e-9)
    assert report.dropped[GAPS_KEY] == 1
    # gyro samples inside the acc gap, and after the acc ends, are outside every overlap
    outside = ((t_gyr > 1980) & (t_gyr < 2500)) | (t_gyr > 3980)
    assert report.dropped["gyroscope samples outside the acc/gyro overlap"] == outside.sum()
    assert report.dropped["accelerometer samples outside the acc/gyro overlap"] == 1  # t = 0


def test_gap_in_a_real_member_gives_two_recordings(tmp_path):
    root = write_realworld(tmp_path, probands=(1,))
    t0 = session_start("lying")
    t = np.concatenate([clock(t0, 50, 2.0), clock(t0 + 3000, 50, 1.0)])
    write_zip(
        root / "proband1/data/acc_lying_csv.zip",
        {member_name("acc", "lying", "waist"): sensor_csv(t, acc_signal(t))},
    )
    recs, report = read_all(root)
    lying = [r for r in recs if activity_of(r) == "lying"]
    assert len(lying) == 2
    assert report.dropped[GAPS_KEY] == 1


def test_numbered_session_files_are_read(tmp_path):
    root = write_realworld(tmp_path, probands=(4,), numbered={"walking": 2})
    recs, report = read_all(root)
    walking = [r for r in recs if activity_of(r) == "walking"]
    assert len(walking) == 1
    assert "acc_walking_2_waist.csv" in walking[0].source
    assert "Gyroscope_walking_2_waist.csv" in walking[0].source
    assert walking[0].subject == 4


def test_nested_session_archives_give_one_recording_per_session(tmp_path):
    root = write_realworld(tmp_path, probands=(7,), nested={"climbingup": 3, "climbingdown": 2})
    recs, report = read_all(root)
    up = [r for r in recs if activity_of(r) == "climbingup"]
    down = [r for r in recs if activity_of(r) == "climbingdown"]
    assert len(up) == 3 and len(down) == 2 and len(recs) == 8 - 2 + 5
    assert all((r.labels == ACTIVITY_ID["upstairs"]).all() for r in up)
    sources = " ".join(r.source for r in up)
    assert "acc_climbingup_csv.zip:acc_climbingup_2_csv.zip:acc_climbingup_2_waist.csv" in sources
    assert "gyr_climbingup_csv.zip:gyr_climbingup_csv.zip:Gyroscope_climbingup_waist.csv" in sources
    # each session is aligned with its own gyro session (values follow the same clock)
    for rec in up:
        assert rec.signal.shape[0] > 150
    assert not report.repairs


def test_differently_numbered_partner_is_paired_by_time_and_counted(tmp_path):
    root = write_realworld(tmp_path, probands=(1,))
    t0 = session_start("sitting")
    t = clock(t0, 50, 4.0)
    write_zip(
        root / "proband1/data/acc_sitting_csv.zip",
        {member_name("acc", "sitting", "waist", 2): sensor_csv(t, acc_signal(t))},
    )
    recs, report = read_all(root)
    assert len([r for r in recs if activity_of(r) == "sitting"]) == 1
    assert report.repairs[PAIRED_BY_TIME_KEY] == 1


def test_missing_waist_gyro_member_drops_the_session_counted(tmp_path):
    root = write_realworld(tmp_path, probands=(1,))
    t = clock(session_start("jumping"), 48, 4.0)
    write_zip(
        root / "proband1/data/gyr_jumping_csv.zip",
        {member_name("gyr", "jumping", "chest"): sensor_csv(t, gyr_signal(t))},
    )
    recs, report = read_all(root)
    assert len(recs) == 7 and "jumping" not in {activity_of(r) for r in recs}
    key = "accelerometer samples of waist files without a partner"
    assert report.dropped[key] == 200
    assert any("acc_jumping_waist.csv has no partner" in n for n in report.notes)


def test_unsorted_rows_are_sorted_and_repeated_times_dropped(tmp_path):
    root = write_realworld(tmp_path, probands=(1,))
    t = clock(session_start("standing"), 50, 4.0)
    rows = np.arange(len(t))
    rows[[10, 11]] = rows[[11, 10]]  # two rows swapped
    rows = np.concatenate([rows, [50]])  # one row repeated
    write_zip(
        root / "proband1/data/acc_standing_csv.zip",
        {member_name("acc", "standing", "waist"): sensor_csv(t[rows], acc_signal(t[rows]))},
    )
    recs, report = read_all(root)
    rec = next(r for r in recs if activity_of(r) == "standing")
    assert report.repairs[UNSORTED_KEY] == 1
    assert report.dropped[REPEATED_TIME_KEY] == 1
    grid = t[0] + 7 + 20.0 * np.arange(len(rec.signal))
    np.testing.assert_allclose(rec.signal[:, :3], acc_signal(grid), atol=1e-7)


def test_locate_and_source_files(tmp_path):
    reader = RealWorldReader()
    root = write_realworld(tmp_path / "realworld" / "realworld2016_dataset", probands=(1, 2))
    assert reader.locate(tmp_path) == root
    files = reader.source_files(root)
    assert len(files) == 2 * 8 * 2
    assert all(f.name.startswith(("acc_", "gyr_")) for f in files)
    assert reader.locate(tmp_path / "empty") is None


def test_harmonised_windows(tmp_path):
    root = write_realworld(tmp_path, probands=(5,), seconds=8.0)
    report = PrepareReport("realworld")
    ws = harmonise(RealWorldReader().read(root, report), WindowConfig(), "realworld", report)
    assert len(ws) == 8 * 5  # 398 samples per recording -> 5 windows of 128, step 64
    assert set(ws.subject.tolist()) == {5}
    assert {int(y) for y in ws.y} == {ACTIVITY_ID[v] for v in EXPECTED_LABEL.values()}


# --------------------------------------------------------------------------- malformed


def _write_acc_walking(root, text: str):
    path = root / "proband1/data/acc_walking_csv.zip"
    write_zip(path, {"acc_walking_waist.csv": text.encode()})
    return f"{path}:acc_walking_waist.csv"


def _good_lines(n=20):
    t = clock(session_start("walking"), 50, n / 50)
    return sensor_csv(t, acc_signal(t)).decode().splitlines()


@pytest.fixture
def tree(tmp_path):
    return write_realworld(tmp_path, probands=(1,))


def test_truncated_row_names_archive_member_and_line(tree):
    lines = _good_lines()
    lines[5] = ",".join(lines[5].split(",")[:3])
    where = _write_acc_walking(tree, "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_all(tree)
    assert err.value.path == where and err.value.line == 6
    assert err.value.path.endswith("proband1/data/acc_walking_csv.zip:acc_walking_waist.csv")
    assert "truncated" in str(err.value)


def test_truncated_last_line(tree):
    lines = _good_lines()
    where = _write_acc_walking(tree, "\n".join(lines) + "\n21,14359")
    with pytest.raises(DataFormatError) as err:
        read_all(tree)
    assert err.value.path == where and err.value.line == 22


def test_non_numeric_cell_names_line_and_column(tree):
    lines = _good_lines()
    cells = lines[8].split(",")
    cells[3] = "9;81"
    lines[8] = ",".join(cells)
    where = _write_acc_walking(tree, "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_all(tree)
    assert err.value.path == where and err.value.line == 9
    assert "attr_y" in str(err.value)


def test_header_mismatch(tree):
    lines = _good_lines()
    lines[0] = "id,time,x,y,z"
    where = _write_acc_walking(tree, "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_all(tree)
    assert err.value.path == where and err.value.line == 1


def test_missing_gyro_archive_is_an_error(tree):
    path = tree / "proband1/data/gyr_running_csv.zip"
    path.unlink()
    with pytest.raises(DataFormatError) as err:
        read_all(tree)
    assert err.value.path == str(path) and "missing" in str(err.value)


def test_missing_data_folder_is_an_error(tree):
    (tree / "proband2").mkdir()
    with pytest.raises(DataFormatError) as err:
        read_all(tree)
    assert err.value.path == str(tree / "proband2" / "data")


def test_unknown_activity_archive_is_an_error(tree):
    bad = write_zip(tree / "proband1/data/acc_dancing_csv.zip", {"acc_dancing_waist.csv": b""})
    with pytest.raises(DataFormatError) as err:
        read_all(tree)
    assert err.value.path == str(bad) and "dancing" in str(err.value)


def test_unknown_activity_member_is_an_error(tree):
    path = write_zip(
        tree / "proband1/data/acc_walking_csv.zip",
        {"acc_strolling_waist.csv": HEADER.encode()},
    )
    with pytest.raises(DataFormatError) as err:
        read_all(tree)
    assert err.value.path == f"{path}:acc_strolling_waist.csv"
    assert "strolling" in str(err.value)


def test_archive_that_is_not_a_zip(tree):
    path = tree / "proband1/data/gyr_lying_csv.zip"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataFormatError) as err:
        read_all(tree)
    assert err.value.path == str(path)
