"""PAMAP2 reader: published layout, chest channels, labels, subjects, NaN repairs, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.data.harmonise import resample
from fedhar.data.labels import ACTIVITY_ID
from fedhar.data.readers.pamap2 import Pamap2Reader
from fedhar.data.registry import get_reader
from fedhar.data.schema import PrepareReport
from fedhar.errors import DataFormatError
from tests.fixtures.pamap2 import (
    CHEST_ACC16,
    CHEST_GYRO,
    ROOT_NAME,
    SUBJECTS,
    dat_text,
    parse_written,
    protocol_rows,
    write_pamap2,
)

CHEST = list(CHEST_ACC16 + CHEST_GYRO)


def read(root):
    report = PrepareReport("pamap2")
    return list(Pamap2Reader().read(root, report)), report


def of_subject(recs, subject):
    return [r for r in recs if r.subject == subject]


def key(counter, words):
    found = [k for k in counter if words in k]
    assert len(found) == 1, (words, dict(counter))
    return counter[found[0]]


def test_chest_16g_accelerometer_and_gyroscope_are_used(tmp_path):
    root = write_pamap2(tmp_path)
    recs, report = read(root)
    written = parse_written((root / "Protocol" / "subject101.dat").read_text())
    (rec,) = of_subject(recs, 101)
    assert rec.rate == 100.0
    np.testing.assert_array_equal(rec.signal, written[:, CHEST])
    # not the hand (x = 2.37), ankle (x = 9.66 constant) or 6 g accelerometer (+100)
    assert rec.signal[:, 0].mean() == pytest.approx(9.7, abs=0.05)
    assert rec.signal[:, 0].std() > 0.3
    assert np.abs(rec.signal[:, :3]).max() < 20
    assert report.files_read == 9
    assert any("Optional/" in n and "not read" in n for n in report.notes)


def test_subjects_keep_their_published_ids(tmp_path):
    recs, _ = read(write_pamap2(tmp_path))
    assert sorted(r.subject for r in recs) == list(SUBJECTS)


def test_label_mapping_and_dropped_activities(tmp_path):
    ids = [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 16, 17, 18, 19, 20, 24]
    activity = np.concatenate([np.r_[np.zeros(30), np.full(100, i)] for i in ids])
    recs, report = read(write_pamap2(tmp_path, {101: protocol_rows(activity)}))
    names = [Pamap2Reader.label_map[i] for i in ids if Pamap2Reader.label_map[i] is not None]
    got = [int(r.labels[0]) for r in of_subject(recs, 101)]
    assert got == [ACTIVITY_ID[n] for n in names]
    assert names == [
        "lying", "sitting", "standing", "walking", "running", "cycling", "nordic_walking",
        "upstairs", "downstairs", "vacuum_cleaning", "ironing", "rope_jumping",
    ]
    assert all(len(r.labels) == 100 for r in of_subject(recs, 101))
    assert key(report.dropped, "transient") == 30 * len(ids)
    assert key(report.dropped, "outside the label space") == 100 * 6


def test_short_dropouts_are_interpolated_and_counted(tmp_path):
    rows = protocol_rows(np.full(400, 4))
    rows[100:105, 21:37] = np.nan  # the whole chest IMU drops out for 5 samples
    rows[300:303, CHEST_GYRO] = np.nan  # only its gyroscope, 3 samples
    rows[200:260, 3:20] = np.nan  # a long hand drop-out: not a used channel
    text = dat_text(rows)
    root = write_pamap2(tmp_path, {101: text})
    recs, report = read(root)
    (rec,) = of_subject(recs, 101)
    assert len(rec.labels) == 400
    assert key(report.repairs, "interpolated") == 5 + 3
    written = parse_written(text)[:, CHEST]
    for c in range(6):
        expected = np.interp(np.arange(100, 105), [99, 105], written[[99, 105], c])
        np.testing.assert_allclose(rec.signal[100:105, c], expected)
    np.testing.assert_array_equal(rec.signal[300:303, :3], written[300:303, :3])  # acc kept
    midpoint = (written[299, 3:] + written[303, 3:]) / 2  # row 301, between rows 299 and 303
    np.testing.assert_allclose(rec.signal[301, 3:], midpoint, rtol=0, atol=1e-12)
    assert np.isfinite(rec.signal).all()
    assert not report.dropped


def test_long_dropouts_and_edge_dropouts_split_and_are_counted(tmp_path):
    rows = protocol_rows(np.full(400, 4))
    rows[150:170, CHEST_ACC16] = np.nan  # 0.2 s: too long to interpolate
    rows[0:3, CHEST_GYRO] = np.nan  # at the start: nothing to interpolate from
    recs, report = read(write_pamap2(tmp_path, {101: rows}))
    lengths = [len(r.labels) for r in of_subject(recs, 101)]
    assert lengths == [147, 230]
    assert key(report.dropped, "drop-outs > 0.1 s") == 20 + 3
    assert "interpolated" not in " ".join(report.repairs)


def test_timestamp_jumps_split_recordings(tmp_path):
    rows = protocol_rows(np.full(300, 3))
    rows[120:, 0] += 37.5  # parts of a recording put together
    recs, report = read(write_pamap2(tmp_path, {101: rows}))
    assert [len(r.labels) for r in of_subject(recs, 101)] == [120, 180]
    assert key(report.repairs, "timestamp jumps") == 1


def test_a_sine_keeps_its_frequency_at_50_hz(tmp_path):
    rows = protocol_rows(np.full(3000, 5), freq=1.5)
    recs, _ = read(write_pamap2(tmp_path, {101: rows}))
    (rec,) = of_subject(recs, 101)
    at50 = resample(rec, 50.0)
    x = at50.signal[:, 0] - at50.signal[:, 0].mean()
    freqs = np.fft.rfftfreq(len(x), 1 / 50.0)
    assert freqs[np.argmax(np.abs(np.fft.rfft(x)))] == pytest.approx(1.5, abs=0.02)


def test_layout_registry_and_load(tmp_path, monkeypatch):
    from fedhar.data import loading

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    root = write_pamap2(tmp_path / "data")
    reader = get_reader("pamap2")
    assert isinstance(reader, Pamap2Reader)
    assert reader.locate(tmp_path / "data") == root and root.name == ROOT_NAME
    assert [p.name for p in reader.source_files(root)] == [f"subject{s}.dat" for s in SUBJECTS]
    prepared = loading.load("pamap2", data_dir=tmp_path / "data", cache=False)
    assert set(prepared.windows.subject) == set(SUBJECTS)
    assert set(prepared.windows.y) == {ACTIVITY_ID["walking"]}


# --------------------------------------------------------------------------- errors


def malformed(tmp_path, edit):
    lines = dat_text(protocol_rows(np.full(40, 4))).splitlines(keepends=True)
    root = write_pamap2(tmp_path, {104: "".join(edit(lines))})
    with pytest.raises(DataFormatError) as err:
        read(root)
    assert err.value.path == str(root / "Protocol" / "subject104.dat")
    return err.value


def set_line(i, change):
    def edit(lines):
        lines = list(lines)
        lines[i] = change(lines[i])
        return lines

    return edit


def set_cell(line_i, column, text):
    def change(line):
        cells = line.split()
        cells[column] = text
        return " ".join(cells) + "\n"

    return set_line(line_i, change)


@pytest.mark.parametrize(
    "edit, line, words",
    [
        (set_line(7, lambda line: " ".join(line.split()[:53]) + "\n"), 8, "found 53"),
        (set_line(9, lambda line: line.rstrip("\n") + " 1.0\n"), 10, "found 55"),
        (lambda lines: lines[:-1] + [" ".join(lines[-1].split()[:20])], 40, "truncated"),
        (set_cell(12, 25, "abc"), 13, "column 26: 'abc'"),
        (set_cell(12, 30, "nan"), 13, "column 31: 'nan'"),  # the published token is NaN
        (set_cell(5, 22, "inf"), 6, "infinite"),
        (set_cell(20, 1, "8"), 21, "unknown activityID 8"),
        (set_cell(21, 1, "4.5"), 22, "unknown activityID 4.5"),
        (set_cell(3, 0, "NaN"), 4, "missing timestamp"),
        # blank lines are skipped, yet later errors still name the right line
        (lambda lines: lines[:2] + ["\n", "   \n"] + set_cell(20, 1, "99")(lines)[2:], 23, "99"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, edit, line, words):
    err = malformed(tmp_path, edit)
    assert err.line == line
    assert words in err.message


def test_missing_subject_file(tmp_path):
    root = write_pamap2(tmp_path)
    (root / "Protocol" / "subject105.dat").unlink()
    with pytest.raises(DataFormatError) as err:
        read(root)
    assert err.value.path == str(root / "Protocol" / "subject105.dat")
    assert "missing" in err.value.message
