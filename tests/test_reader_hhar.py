"""HHAR reader: published layout, clock alignment, labels, subjects, repairs and errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.data.harmonise import WindowConfig, harmonise, resample
from fedhar.data.labels import ACTIVITY_ID
from fedhar.data.readers.hhar import HharReader, nominal_rate
from fedhar.data.registry import get_reader
from fedhar.data.schema import PrepareReport
from fedhar.errors import DataFormatError
from tests.fixtures.hhar import (
    ACC_FILE,
    GYRO_FILE,
    ROOT_NAME,
    Series,
    acc_signal,
    gyro_signal,
    rows,
    stream_pair,
    uniform_times,
    write_hhar,
)


def read(root):
    report = PrepareReport("hhar")
    return list(HharReader().read(root, report)), report


def grid_times(rec, start):
    return start + np.arange(len(rec.labels)) / rec.rate


def key(report_counter, words):
    """The one report key containing ``words`` (keys carry their unit in the text)."""
    found = [k for k in report_counter if words in k]
    assert len(found) == 1, (words, dict(report_counter))
    return report_counter[found[0]]


# --------------------------------------------------------------------------- alignment


def test_200hz_acc_and_190hz_gyro_offset_in_time_share_one_grid(tmp_path):
    acc, gyro = stream_pair(acc_rate=200, gyro_rate=190, gyro_delay=0.037, stop=10.0)
    recs, report = read(write_hhar(tmp_path, [acc], [gyro]))
    assert len(recs) == 1
    rec = recs[0]
    assert rec.rate == 200.0  # the faster sensor's nominal rate
    # the grid covers the overlap only: from the first gyroscope sample on
    t = grid_times(rec, 0.037)
    assert t[-1] <= min(acc.time_s[-1], gyro.time_s[-1]) + 1e-9
    assert len(t) == int((min(acc.time_s[-1], gyro.time_s[-1]) - 0.037) * 200) + 1
    # both sensors sampled at the grid's true times (linear interpolation error only)
    np.testing.assert_allclose(rec.signal[:, :3], acc_signal(t), atol=2e-3)
    np.testing.assert_allclose(rec.signal[:, 3:], gyro_signal(t), atol=2e-3)
    # aligning by row index instead of time would be far off
    n = min(len(t), len(gyro.time_s))
    assert np.abs(gyro.xyz[:n] - gyro_signal(t[:n])).max() > 0.3
    assert report.files_read == 2
    assert any("Watch_accelerometer.csv" in n for n in report.notes)


def test_constant_rate_sines_keep_their_frequency_after_harmonise(tmp_path):
    ta = uniform_times(200, 0, 30)
    tg = uniform_times(190, 0.011, 30)
    acc = Series("a", "nexus4_1", ta, acc_signal(ta, freq=3.0))
    gyro = Series("a", "nexus4_1", tg, gyro_signal(tg, freq=5.0))
    recs, _ = read(write_hhar(tmp_path, [acc], [gyro]))
    (rec,) = recs
    at50 = resample(rec, 50.0)
    assert at50.rate == 50.0
    spectrum = np.abs(np.fft.rfft(at50.signal - at50.signal.mean(axis=0), axis=0))
    freqs = np.fft.rfftfreq(len(at50.signal), 1 / 50.0)
    assert freqs[np.argmax(spectrum[:, 0])] == pytest.approx(3.0, abs=0.05)  # acc x
    assert freqs[np.argmax(spectrum[:, 5])] == pytest.approx(5.0, abs=0.05)  # gyro z
    # amplitudes survive (1.5 m/s^2 on acc x, 1.1 rad/s on gyro z), away from the edges
    middle = at50.signal[100:-100] - at50.signal[100:-100].mean(axis=0)
    assert np.sqrt(2 * np.mean(middle[:, 0] ** 2)) == pytest.approx(1.5, rel=0.02)
    assert np.sqrt(2 * np.mean(middle[:, 5] ** 2)) == pytest.approx(1.1, rel=0.02)
    windows = harmonise(recs, WindowConfig(), "hhar", PrepareReport("hhar"))
    assert len(windows) > 0 and windows.x.shape[1:] == (6, 128)


def test_samsung_uptime_clock_at_50hz(tmp_path):
    acc, gyro = stream_pair(
        device="samsungold_2", acc_rate=50, gyro_rate=50, gyro_delay=0.013, stop=8, clock="uptime"
    )
    assert acc.creation_ns()[0] < 10**15  # 14 digits, as in the published file
    recs, _ = read(write_hhar(tmp_path, [acc], [gyro]))
    (rec,) = recs
    assert rec.rate == 50.0
    t = grid_times(rec, gyro.creation_ns()[0] / 1e9 - acc.creation_ns()[0] / 1e9)
    np.testing.assert_allclose(rec.signal[:, :3], acc_signal(t), atol=0.02)
    np.testing.assert_allclose(rec.signal[:, 3:], gyro_signal(t), atol=0.02)


def test_gyro_on_another_clock_base_is_aligned_through_arrival_time(tmp_path):
    acc, gyro = stream_pair(acc_rate=100, gyro_rate=100, gyro_delay=0.02, stop=10, freq=0.5)
    gyro.clock = "uptime"  # a different Creation_Time base than the accelerometer's
    recs, report = read(write_hhar(tmp_path, [acc], [gyro]))
    assert key(report.repairs, "gyroscope clock sessions aligned through Arrival_Time") == 1
    (rec,) = recs
    t = grid_times(rec, 0.02)
    # aligned up to the Arrival_Time lag difference (a few ms): 0.5 Hz sines barely move
    np.testing.assert_allclose(rec.signal[:, 3:], gyro_signal(t, 0.5), atol=0.03)


def test_clock_reset_inside_a_stream_is_split_not_interleaved(tmp_path):
    # a Samsung phone reboots: Creation_Time restarts near zero while Arrival_Time goes on
    first = stream_pair("a", "s3_1", 150, 150, stop=6, gt="walk", clock="uptime")
    second = stream_pair("a", "s3_1", 150, 150, stop=6, gt="sit", clock="uptime")
    for s in second:
        s.clock_base_ns = 20_000_000_000  # 20 s after boot: below the first session's clock
        s.wall_start_ms += 120_000  # two minutes later on the wall clock
    recs, report = read(write_hhar(tmp_path, [first[0], second[0]], [first[1], second[1]]))
    assert key(report.repairs, "clock resets") == 2  # once per sensor
    assert [int(r.labels[0]) for r in recs] == [ACTIVITY_ID["walking"], ACTIVITY_ID["sitting"]]
    for rec in recs:
        t = grid_times(rec, 0.037)
        np.testing.assert_allclose(rec.signal[:, :3], acc_signal(t), atol=0.01)
        np.testing.assert_allclose(rec.signal[:, 3:], gyro_signal(t), atol=0.01)


# --------------------------------------------------------------------------- labels, subjects


def test_labels_subjects_and_null_rows(tmp_path):
    labels = ["bike", "sit", "stand", "walk", "stairsup", "stairsdown", "null"]
    acc_list, gyro_list, expected = [], [], []
    for user, device in (("a", "nexus4_1"), ("c", "s3mini_2")):
        t0 = 0.0
        for gt in labels:
            acc, gyro = stream_pair(user, device, 100, 100, t0, t0 + 3, 0.004, gt)
            acc_list.append(acc)
            gyro_list.append(gyro)
            t0 += 3
            if gt != "null":
                expected.append((ord(user) - ord("a") + 1, ACTIVITY_ID[HharReader.label_map[gt]]))
    recs, report = read(write_hhar(tmp_path, acc_list, gyro_list))
    assert [(r.subject, int(r.labels[0])) for r in recs] == expected
    assert all((r.labels == r.labels[0]).all() for r in recs)
    assert {r.subject for r in recs} == {1, 3}
    null_rows = sum(len(s.time_s) for s in acc_list + gyro_list if s.gt == "null")
    assert key(report.dropped, "labelled null") == null_rows
    assert HharReader.label_map == {
        "bike": "cycling", "sit": "sitting", "stand": "standing", "walk": "walking",
        "stairsup": "upstairs", "stairsdown": "downstairs", "null": None,
    }


def test_duplicate_timestamps_are_removed_and_counted(tmp_path):
    acc, gyro = stream_pair(acc_rate=100, gyro_rate=100, gyro_delay=0.005, stop=5)
    acc_rows, gyro_rows = rows(acc), rows(gyro)
    # the same sample logged twice, a known quirk: rows 49-51, 199, 200 of the accelerometer
    # and rows 9, 299 of the gyroscope repeated (phone_csv renumbers the Index cells)
    acc_rows = acc_rows[:52] + acc_rows[49:201] + acc_rows[199:]
    gyro_rows = gyro_rows[:10] + gyro_rows[9:300] + gyro_rows[299:]
    recs, report = read(write_hhar(tmp_path, acc_rows, gyro_rows))
    assert len(acc_rows) - len(acc.time_s) == 5 and len(gyro_rows) - len(gyro.time_s) == 2
    assert key(report.repairs, "repeating a timestamp") == 5 + 2
    (rec,) = recs
    # 100 Hz linear interpolation of a 2 Hz sine: error < 1.5 * (2 pi 2 / 100)^2 / 8 = 3e-3
    np.testing.assert_allclose(rec.signal[:, :3], acc_signal(grid_times(rec, 0.005)), atol=4e-3)


def test_gaps_and_label_changes_split_recordings(tmp_path):
    acc, gyro = stream_pair(acc_rate=100, gyro_rate=100, gyro_delay=0.003, stop=12)
    keep = (gyro.time_s < 4.0) | (gyro.time_s > 4.5)  # a 0.5 s gyroscope gap
    gyro = Series("a", "nexus4_1", gyro.time_s[keep], gyro.xyz[keep])
    acc.gt = np.where(acc.time_s < 8.0, "walk", "stairsup")
    gyro.gt = np.where(gyro.time_s < 8.0, "walk", "stairsup")
    recs, report = read(write_hhar(tmp_path, [acc], [gyro]))
    assert len(recs) == 3
    walking, upstairs = ACTIVITY_ID["walking"], ACTIVITY_ID["upstairs"]
    assert [int(r.labels[0]) for r in recs] == [walking, walking, upstairs]
    assert key(report.repairs, "gaps > 0.2 s") == 1
    durations = [len(r.labels) / r.rate for r in recs]
    assert durations[0] == pytest.approx(4.0, abs=0.02)
    assert durations[1] == pytest.approx(3.5, abs=0.02)
    assert durations[2] == pytest.approx(4.0, abs=0.02)


def test_stream_without_gyroscope_rows_is_dropped_and_counted(tmp_path):
    acc, gyro = stream_pair(acc_rate=100, gyro_rate=100, stop=4)
    lonely, _ = stream_pair("b", "s3_2", 150, 150, stop=2)
    recs, report = read(write_hhar(tmp_path, [acc, lonely], [gyro]))
    assert len(recs) == 1 and recs[0].subject == 1
    assert key(report.dropped, "without gyroscope") == len(lonely.time_s)
    assert any("b/s3_2" in n for n in report.notes)


def test_nominal_rates():
    assert [nominal_rate(r) for r in (48.7, 99.0, 152.0, 190.0, 201.5, 120.0)] == [
        50, 100, 150, 200, 200, 150
    ]


# --------------------------------------------------------------------------- layout


def test_layout_registry_and_load(tmp_path, monkeypatch):
    from fedhar.data import loading

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    acc, gyro = stream_pair(stop=12)
    root = write_hhar(tmp_path / "data", [acc], [gyro])
    reader = get_reader("hhar")
    assert isinstance(reader, HharReader)
    assert reader.locate(tmp_path / "data") == root and root.name == ROOT_NAME
    assert reader.source_files(root) == [root / ACC_FILE, root / GYRO_FILE]
    prepared = loading.load("hhar", data_dir=tmp_path / "data", cache=False)
    assert len(prepared.windows) > 0
    assert set(prepared.windows.dataset) == {"hhar"}
    assert set(prepared.windows.y) == {ACTIVITY_ID["walking"]}


# --------------------------------------------------------------------------- errors


def write_rows(tmp_path, acc_edit=None, gyro_edit=None):
    """1 s of 50 Hz rows; an edit maps the list of rows (without Index cells) to new rows."""
    acc, gyro = stream_pair(acc_rate=50, gyro_rate=50, stop=1)
    a, g = rows(acc), rows(gyro)
    return write_hhar(tmp_path, acc_edit(a) if acc_edit else a, gyro_edit(g) if gyro_edit else g)


def replace_row(i, text):
    def edit(lines):
        lines = list(lines)
        lines[i] = text(lines[i]) if callable(text) else text
        return lines

    return edit


def set_cell(i, column, text):
    """Row i with its cell ``column`` (0 = Arrival_Time, the Index cell is added later)."""

    def change(row):
        cells = row.split(",")
        cells[column] = text
        return ",".join(cells)

    return replace_row(i, change)


@pytest.mark.parametrize(
    "edit, line, words",
    [
        (replace_row(5, lambda r: r.rsplit(",", 4)[0]), 7, "truncated"),
        (replace_row(6, lambda r: r.replace(",a,", ",a,extra,")), 8, "found 11"),
        (set_cell(3, 1, "1e9x"), 5, "not an integer in column Creation_Time"),
        (set_cell(9, 3, "abc"), 11, "column y: 'abc'"),
        (set_cell(9, 2, "nan"), 11, "column x: 'nan'"),
        (set_cell(10, 4, ""), 12, "column z: ''"),
        (set_cell(11, 7, ""), 13, "empty Device"),
        (replace_row(12, lambda r: r.rsplit(",", 1)[0] + ",jog"), 14, "unknown gt 'jog'"),
        (replace_row(4, lambda r: r.replace(",a,", ",z,")), 6, "unknown User 'z'"),
        (replace_row(2, ""), 4, "found 2"),  # a row of only its Index cell
        (replace_row(0, lambda r: r + ",x"), 2, "found 11"),  # pandas only warns on row 1
    ],
)
def test_malformed_accelerometer_rows_name_file_and_line(tmp_path, edit, line, words):
    root = write_rows(tmp_path, edit)
    with pytest.raises(DataFormatError) as err:
        read(root)
    assert err.value.path == str(root / ACC_FILE)
    assert err.value.line == line
    assert words in err.value.message


def test_malformed_gyroscope_row_names_the_gyroscope_file(tmp_path):
    root = write_rows(tmp_path, None, replace_row(20, lambda r: r.rsplit(",", 7)[0]))
    with pytest.raises(DataFormatError) as err:
        read(root)
    assert err.value.path == str(root / GYRO_FILE) and err.value.line == 22


def test_missing_gyroscope_file(tmp_path):
    acc, _ = stream_pair(stop=1)
    root = write_hhar(tmp_path, [acc], None)
    with pytest.raises(DataFormatError) as err:
        read(root)
    assert err.value.path == str(root / GYRO_FILE) and "missing" in err.value.message


def test_wrong_header(tmp_path):
    root = write_rows(tmp_path, None)
    path = root / ACC_FILE
    path.write_text(path.read_text().replace("Creation_Time", "CreationTime", 1))
    with pytest.raises(DataFormatError) as err:
        read(root)
    assert err.value.path == str(path) and err.value.line == 1
