"""WISDM reader: merged CSV layout, clocks from time stamps, gaps, drops, labels, axes, errors, real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import coherence

from fedhar.data import loading
from fedhar.data.harmonise import WindowConfig, harmonise
from fedhar.data.labels import ACTIVITIES, ACTIVITY_ID
from fedhar.data.readers import wisdm
from fedhar.data.readers.wisdm import LABEL_MAP, WisdmReader
from fedhar.data.registry import get_reader
from fedhar.data.schema import PrepareReport
from fedhar.errors import DataFormatError
from tests.fixtures.wisdm import T0_NS, Piece, run_rows, signal, write_subject, write_wisdm


def read(root):
    report = PrepareReport("wisdm")
    return list(WisdmReader().read(root, report)), report


def windows(recs):
    return harmonise(iter(recs), WindowConfig(), "wisdm", PrepareReport("wisdm"))


def one_run(tmp_path, pieces, subject=1600, activity="A", gravity="-y"):
    root = tmp_path / "wisdm"
    write_subject(root, subject, run_rows(subject, activity, pieces, gravity))
    return root


def test_values_are_read_as_published_with_the_rate_of_the_time_stamps(tmp_path):
    root = write_wisdm(tmp_path, subjects=(1600,), activities="AB", seconds=20.0)
    recs, report = read(root)
    assert report.files_read == 1 and len(recs) == 2
    lines = (root / "phone" / "data_1600_merged.csv").read_text().splitlines()
    written = np.array([[float(c) for c in line.split(",")[3:]] for line in lines[1:401]])
    np.testing.assert_allclose(recs[0].signal, written, rtol=0)  # m/s^2 and rad/s: no conversion
    assert recs[0].subject == 1600 and recs[0].rate == pytest.approx(20.0, rel=1e-6)
    assert recs[0].source.endswith("data_1600_merged.csv (lines 2-401)")
    assert sum(report.dropped.values()) == 0 and sum(report.repairs.values()) == 0


def test_letters_map_into_the_union_label_space(tmp_path):
    root = write_wisdm(tmp_path, subjects=(1600,), activities="ABCM")
    recs, _ = read(root)
    assert [int(r.labels[0]) for r in recs] == [ACTIVITY_ID[n] for n in ("walking", "running", "stairs", "kicking")]
    assert LABEL_MAP == {"A": "walking", "B": "running", "C": "stairs", "M": "kicking"}
    # stairs and kicking were appended: no older id moved
    assert ACTIVITIES[-2:] == ("stairs", "kicking") and ACTIVITY_ID["elevator_down"] == 22
    assert ACTIVITY_ID["upstairs"] != ACTIVITY_ID["stairs"] != ACTIVITY_ID["downstairs"]


@pytest.mark.parametrize("rate", [19.86, 20.0, 25.06, 49.65])
def test_each_measured_rate_gives_the_windows_of_its_duration(tmp_path, rate):
    root = one_run(tmp_path, (Piece(rate, 60.0),))
    recs, report = read(root)
    if rate > 40:  # the 50 Hz clock: gyroscope unusable, dropped and counted
        assert recs == [] and report.dropped[wisdm.DROP_50HZ] == round(60.0 * rate)
        return
    (rec,) = recs
    assert rec.rate == pytest.approx(rate, rel=1e-4)
    n50 = len(harmonise_samples(rec))
    assert n50 == pytest.approx(60.0 * 50, abs=3)  # 60 s at 50 Hz, whatever the native rate
    # declaring the nominal 20 Hz for a 25 Hz run would stretch it to 75 s
    assert len(windows(recs)) == 1 + (n50 - 128) // 64


def harmonise_samples(rec):
    from fedhar.data.harmonise import resample

    return resample(rec, 50.0).labels


def test_a_rate_change_inside_a_run_splits_it(tmp_path):
    root = one_run(tmp_path, (Piece(20.0, 30.0), Piece(25.0, 40.0)))
    recs, report = read(root)
    assert [round(r.rate) for r in recs] == [20, 25]
    assert [len(r.labels) for r in recs] == pytest.approx([600, 1000], abs=8)  # the rolling median's edge
    assert report.repairs[wisdm.CUT_RATE] == 1 and report.repairs[wisdm.CUT_GAP] == 0
    assert sum(len(r.labels) for r in recs) + sum(report.dropped.values()) == 1600


def test_a_clock_gap_splits_a_run_and_small_late_steps_do_not(tmp_path):
    root = one_run(tmp_path, (Piece(20.0, 30.0), Piece(20.0, 30.0, gap_s=1.0), Piece(20.0, 30.0, gap_s=0.12)))
    recs, report = read(root)
    assert [len(r.labels) for r in recs] == [600, 1200]  # a 1 s gap (20 steps) cuts; 120 ms (2.4 steps) does not
    assert report.repairs[wisdm.CUT_GAP] == 1 and sum(report.dropped.values()) == 0


def test_jittered_time_stamps_are_one_segment_at_the_mean_rate(tmp_path):
    root = one_run(tmp_path, (Piece(25.06, 60.0, jitter_ms=15.0),))
    (rec,), report = read(root)
    assert rec.rate == pytest.approx(25.06, rel=2e-3) and len(rec.labels) == round(60 * 25.06)
    assert sum(report.repairs.values()) == 0


def test_drops_are_counted_by_reason(tmp_path):
    root = tmp_path / "wisdm"
    lines = run_rows(1600, "A", (Piece(400.0, 0.06), Piece(20.0, 30.0), Piece(49.65, 20.0), Piece(20.0, 2.0, gap_s=2.0)))
    lines += lines[24:324]  # 300 rows again: duplicates
    write_subject(root, 1600, lines)
    recs, report = read(root)
    assert [len(r.labels) for r in recs] == [pytest.approx(600, abs=8)]
    dropped = dict(report.dropped)
    assert dropped[wisdm.DROP_DUPLICATE] == 300
    assert dropped[wisdm.DROP_50HZ] == pytest.approx(993, abs=8)  # 20 s at 49.65 Hz
    assert dropped[wisdm.DROP_SHORT] == pytest.approx(40, abs=8)  # 2 s after a gap: shorter than a window
    assert dropped[wisdm.DROP_UNCLOCKED] == pytest.approx(24, abs=8)  # a 2.5 ms burst
    assert len(recs[0].labels) + sum(dropped.values()) == len(lines)  # every row accounted for


def test_time_going_backwards_cuts_and_is_counted(tmp_path):
    root = tmp_path / "wisdm"
    lines = run_rows(1600, "A", (Piece(20.0, 30.0),))
    lines = lines[:300] + run_rows(1600, "A", (Piece(20.0, 30.0),), t0_ns=T0_NS - 10**9 + 7_000_000)[300:]  # 0.993 s back
    write_subject(root, 1600, lines)
    recs, report = read(root)
    assert report.repairs[wisdm.CUT_BACKWARDS] == 1 and len(recs) == 2


def test_duplicates_keep_the_first_copy(tmp_path):
    root = tmp_path / "wisdm"
    first = run_rows(1629, "A", (Piece(20.0, 10.0),))
    second = [line.rsplit(",", 3)[0] + ",9,9,9" for line in first]  # same acc and time, another gyroscope
    write_subject(root, 1629, first + second)
    (rec,), report = read(root)
    assert report.dropped[wisdm.DROP_DUPLICATE] == 200
    assert not (rec.signal[:, 3:] == 9).any()


def test_axes_are_never_rotated_and_orientation_is_reported(tmp_path):
    root = tmp_path / "wisdm"
    write_subject(root, 1600, run_rows(1600, "A", gravity="+x") + run_rows(1600, "B", gravity="-y", t0_ns=T0_NS * 2))
    write_subject(root, 1601, run_rows(1601, "A", gravity="-z"))
    recs, report = read(root)
    assert [wisdm.gravity_axis(r.signal[:, :3]) for r in recs] == ["+x", "-y", "-z"]
    t = np.arange(200) * 50_000_000
    np.testing.assert_allclose(recs[0].signal, signal(t, 1600, "A", "+x"), atol=1e-6)  # as written
    (note,) = [n for n in report.notes if "gravity axis" in n]
    assert "+x 1, -y 1, -z 1" in note and "changes between runs for 1 subjects: 1600 (+x -y)" in note


def test_gravity_axis_follows_the_largest_mean():
    acc = np.array([[0.5, -9.7, 1.0], [0.4, -9.9, 2.0]])
    assert wisdm.gravity_axis(acc) == "-y"
    assert wisdm.gravity_axis(acc[:, [1, 0, 2]] * -1) == "+x"


def test_layout_registry_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    root = write_wisdm(tmp_path / "data", subjects=(1600, 1650), activities="AC", seconds=30.0)
    reader = get_reader("wisdm")
    assert isinstance(reader, WisdmReader) and reader.locate(tmp_path / "data") == root
    assert [p.name for p in reader.source_files(root)] == ["data_1600_merged.csv", "data_1650_merged.csv"]
    prepared = loading.load("wisdm", data_dir=tmp_path / "data", cache=False)
    per = 1 + (1500 - 128) // 64  # 30 s at 50 Hz
    assert prepared.windows.class_counts() == {"walking": 2 * per, "stairs": 2 * per}
    assert set(prepared.windows.subject) == {1600, 1650}


def test_cli_info_and_errors_name_file_and_line(capsys, tmp_path, monkeypatch):
    from fedhar.cli import main

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDHAR_DATA_DIR", raising=False)
    root = write_wisdm(tmp_path / "data", subjects=(1600, 1601), activities="BM")
    assert main(["data", "info", "wisdm", "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "subjects     2" in out and "activities   2" in out
    assert "B -> running" in out and "C -> stairs" in out and "M -> kicking" in out
    path = root / "phone" / "data_1601_merged.csv"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(",B,", ",B,x", 1)
    path.write_text("\n".join(lines) + "\n")
    assert main(["data", "info", "wisdm", "--data-dir", str(tmp_path / "data")]) == 2
    message = capsys.readouterr().err.split("\r")[-1]
    assert message.startswith(f"fedhar: error: {path}:6: not an integer in column Time stamp")
    assert "Traceback" not in message


def test_download_says_why_there_is_none(capsys, tmp_path):
    from fedhar.cli import main

    assert main(["data", "download", "wisdm", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no download for 'wisdm'" in err and "https://archive.ics.uci.edu/dataset/507" in err
    assert list(tmp_path.iterdir()) == []  # nothing fetched or written


# --------------------------------------------------------------------------- errors


def bad_file(tmp_path, edit):
    """A one-subject tree whose 1600 file went through ``edit(lines) -> lines`` (header is lines[0])."""
    root = write_wisdm(tmp_path, subjects=(1600,), activities="A")
    path = root / "phone" / "data_1600_merged.csv"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    return root, path


def cell(lines, row, column, value):
    cells = lines[row].split(",")
    cells[column] = value
    lines[row] = ",".join(cells)
    return lines


def drop_column(lines, column):
    return [",".join(c for i, c in enumerate(line.split(",")) if i != column) for line in lines]


@pytest.mark.parametrize(
    "edit, line, words",
    [
        (lambda ls: drop_column(ls, 8), 1, "unexpected header"),  # missing Gyro_z
        (lambda ls: [ls[0].replace("Time stamp", "Timestamp"), *ls[1:]], 1, "unexpected header"),
        (lambda ls: ["", *ls], 1, "unexpected header"),
        (lambda ls: cell(ls, 7, 4, "abc"), 8, "not a number in column Accel_y: 'abc'"),
        (lambda ls: cell(ls, 9, 6, "nan"), 10, "non-finite value in column Gyro_x"),
        (lambda ls: cell(ls, 9, 5, ""), 10, "not a number in column Accel_z: ''"),
        (lambda ls: cell(ls, 3, 8, "inf"), 4, "non-finite value in column Gyro_z"),
        (lambda ls: cell(ls, 4, 2, "252207717164786.5"), 5, "not an integer in column Time stamp"),
        (lambda ls: cell(ls, 4, 0, "16x0"), 5, "not an integer in column Subject-Id"),
        (lambda ls: [*ls[:6], ls[6].rsplit(",", 1)[0], *ls[7:]], 7, "expected 9 comma-separated cells, found 8"),
        (lambda ls: [*ls[:6], ls[6] + ",1.0", *ls[7:]], 7, "expected 9 comma-separated cells, found 10"),
        (lambda ls: cell(ls, 11, 1, "D"), 12, "unknown activity 'D' (known: A, B, C, M)"),
        (lambda ls: cell(ls, 11, 0, "1601"), 12, "subject 1601 in the file of subject 1600"),
        (lambda ls: ls[:1], None, "no data rows after the header"),
        (lambda ls: [*ls[:20], "", *ls[20:]], 21, "blank line between data lines"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, edit, line, words):
    root, path = bad_file(tmp_path, edit)
    with pytest.raises(DataFormatError) as err:
        read(root)
    assert err.value.path == str(path) and err.value.line == line
    assert words in err.value.message


def test_unexpected_names_in_the_phone_folder(tmp_path):
    root = write_wisdm(tmp_path, subjects=(1600,), activities="A")
    stray = root / "phone" / "data_1600_merged.csv.bak"
    stray.write_text("x")
    with pytest.raises(DataFormatError, match="unexpected name in phone/") as err:
        read(root)
    assert err.value.path == str(stray)
    stray.rename(root / "phone" / "data_01600_merged.csv")
    with pytest.raises(DataFormatError, match=r"a second file for subject 1600 \(first: data_01600_merged.csv\)"):
        read(root)


# --------------------------------------------------------------------------- real data


def shared_root() -> Path:
    """The shared real WISDM subset, or skip (looked for as fedhar.data.paths does)."""
    from fedhar.data.paths import PROJECT_ROOT

    dirs = [Path(p) for p in os.environ.get("FEDHAR_DATA_DIR", "").split(os.pathsep) if p]
    dirs.append(PROJECT_ROOT.parent / "shared" / "data")
    for directory in dirs:
        root = WisdmReader().locate(directory)
        if root is not None:
            return root
    pytest.skip(f"WISDM not found under {', '.join(map(str, dirs))}: shared real data absent")


@pytest.fixture(scope="module")
def real():
    """Every file read once: the tables, the recordings, the windows and the report."""
    root = shared_root()
    files = wisdm.find_subject_files(root)
    tables = {s: wisdm.read_subject_file(p, s) for s, p in files.items()}
    report = PrepareReport("wisdm")
    recs = list(WisdmReader().read_tables(tables.values(), report))  # each file parsed once
    ws = harmonise(iter(recs), WindowConfig(), "wisdm", report)
    return tables, recs, ws, report


@pytest.mark.slow  # the 51 files are read once per module: about 10 s
def test_real_wisdm_facts(real):
    tables, recs, ws, report = real
    assert sorted(tables) == list(range(1600, 1651))  # 51 subjects
    assert sum(len(t.labels) for t in tables.values()) == 804_649
    assert report.files_read == 51
    letters = np.unique(np.concatenate([t.labels for t in tables.values()]))
    assert letters.tolist() == ["A", "B", "C", "M"]
    assert len(ws) == 19_092 and ws.class_counts() == {"walking": 4873, "running": 4714, "stairs": 4856, "kicking": 4649}
    assert len(np.unique(ws.subject)) == 37  # the other 14 logged at 50 Hz only


@pytest.mark.slow
def test_real_wisdm_drops_add_up(real):
    _, recs, _, report = real
    assert report.dropped[wisdm.DROP_DUPLICATE] == 14_264  # 1629's second copy
    assert report.dropped[wisdm.DROP_50HZ] == 264_957
    assert report.dropped[wisdm.DROP_SHORT] == 265 and report.dropped[wisdm.DROP_UNCLOCKED] == 58
    kept = sum(len(r.labels) for r in recs)
    assert kept == 525_105
    row_drops = (wisdm.DROP_DUPLICATE, wisdm.DROP_50HZ, wisdm.DROP_SHORT, wisdm.DROP_UNCLOCKED)
    assert kept + sum(report.dropped[k] for k in row_drops) == 804_649
    assert report.repairs[wisdm.CUT_GAP] == 13 and report.repairs[wisdm.CUT_RATE] == 19
    assert report.repairs[wisdm.CUT_BACKWARDS] == 0
    rates = sorted({round(r.rate, 1) for r in recs})
    assert rates[0] > 19 and rates[-1] < 26 and {19.9, 20.0, 25.1} <= set(rates)


def gait_coherence(table, start, stop) -> float:
    """Peak magnitude-squared coherence of |acc| and |gyro| in 0.5-6 Hz, rows start..stop."""
    acc = np.linalg.norm(table.values[start:stop, :3], axis=1)
    gyro = np.linalg.norm(table.values[start:stop, 3:], axis=1)
    rate = (stop - start - 1) * 1e9 / (table.time_ns[stop - 1] - table.time_ns[start])
    f, c = coherence(acc, gyro, fs=rate, nperseg=256)
    return float(c[(f > 0.5) & (f < 6)].max())


@pytest.mark.slow
def test_real_wisdm_gyroscope_follows_the_accelerometer_only_below_50_hz(real):
    """The evidence behind DROP_CLOCKS_HZ: walking and jogging runs of one clock only."""
    tables, _, _, _ = real
    coherent, incoherent = {}, {}
    for subject, table in tables.items():
        table = wisdm.drop_duplicates(table, PrepareReport("wisdm"))
        for start, stop in wisdm.label_runs(table.labels):
            if table.labels[start] not in "AB":
                continue
            segments = wisdm.clock_segments(table.time_ns[start:stop], PrepareReport("wisdm"))
            if len({s.clock_hz for s in segments}) != 1:
                continue
            key = (subject, str(table.labels[start]))
            target = incoherent if segments[0].clock_hz == 50.0 else coherent
            target[key] = gait_coherence(table, start, stop)
    assert len(coherent) == 66 and min(coherent.values()) > 0.6
    assert len(incoherent) == 30 and sorted(incoherent.values())[-2] < 0.15
    assert max(incoherent, key=incoherent.get) == (1626, "B")


@pytest.mark.slow
def test_real_wisdm_orientation_is_kept_and_differs(real):
    tables, recs, _, report = real
    first = recs[0]  # 1600's walking: lines 2.. of its file, as published
    assert first.source.endswith("data_1600_merged.csv (lines 2-3575)")
    np.testing.assert_array_equal(first.signal, tables[1600].values[:3574])
    (note,) = [n for n in report.notes if "gravity axis" in n]
    assert note.startswith("wisdm: dominant gravity axis of the runs: +x 23, +y 51, -x 10, -y 89;")
    assert "changes between runs for 16 subjects" in note
