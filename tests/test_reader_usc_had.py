"""USC-HAD reader: published .mat layout, units, 100 -> 50 Hz, labels, quirks, errors, real data."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from fedhar.data.harmonise import WindowConfig, harmonise, resample
from fedhar.data.labels import ACTIVITIES, ACTIVITY_ID
from fedhar.data.readers.usc_had import ERRATUM_REPAIR, LABEL_MAP, UscHadReader
from fedhar.data.registry import get_reader
from fedhar.data.schema import STANDARD_GRAVITY, PrepareReport
from fedhar.errors import DataFormatError
from tests.fixtures.usc_had import trial_fields, trial_readings, write_trial, write_usc_had


def read(root):
    report = PrepareReport("usc-had")
    return list(UscHadReader().read(root, report)), report


def by_file(recs):
    return {Path(r.source).parent.name + "/" + Path(r.source).name: r for r in recs}


def test_units_are_converted_and_the_native_rate_kept(tmp_path):
    root = write_usc_had(tmp_path, subjects=(3,), activities=(1, 8), trials=(1, 2))
    recs, report = read(root)
    assert report.files_read == 4 == len(recs)
    rec = by_file(recs)["Subject3/a8t2.mat"]
    written = trial_readings(300, activity=8, subject=3, trial=2)
    assert rec.rate == 100.0 and rec.subject == 3
    np.testing.assert_allclose(rec.signal[:, :3], written[:, :3] * STANDARD_GRAVITY, rtol=1e-15)
    np.testing.assert_allclose(rec.signal[:, 3:], written[:, 3:] * math.pi / 180, rtol=1e-15)
    assert rec.signal[:, 0].mean() == pytest.approx(1.0832 * STANDARD_GRAVITY)  # x: vertical


def test_100_hz_becomes_50_hz_windows_keeping_the_frequency(tmp_path):
    root = write_usc_had(tmp_path, subjects=(1,), activities=(6,), n=1200)
    (rec,), _ = read(root)
    at50 = resample(rec, 50.0)
    assert len(at50.labels) == 600
    x = at50.signal[:, 3] - at50.signal[:, 3].mean()
    freqs = np.fft.rfftfreq(len(x), 1 / 50.0)
    assert freqs[np.argmax(np.abs(np.fft.rfft(x)))] == pytest.approx(2.0, abs=0.05)
    ws = harmonise(iter([rec]), WindowConfig(), "usc-had", PrepareReport("usc-had"))
    assert len(ws) == 1 + (600 - 128) // 64 and ws.x.shape[1:] == (6, 128)


def test_all_twelve_activities_stay_distinct_and_subjects_come_from_folders(tmp_path):
    root = write_usc_had(tmp_path, subjects=(1, 14))
    recs, _ = read(root)
    got = {(r.subject, Path(r.source).name): int(r.labels[0]) for r in recs}
    assert len(got) == 24
    for (_subject, name), label in got.items():
        activity = int(name[1 : name.index("t")])
        assert label == ACTIVITY_ID[LABEL_MAP[activity]]
    assert [LABEL_MAP[a] for a in range(1, 13)] == [
        "walking", "walking_left", "walking_right", "upstairs", "downstairs", "running",
        "jumping", "sitting", "standing", "lying", "elevator_up", "elevator_down",
    ]
    assert len({lab for lab in got.values()}) == 12
    assert {s for s, _ in got} == {1, 14}
    # the four new activities were appended: the ids of the older ones did not move
    assert ACTIVITIES[19:23] == ("walking_left", "walking_right", "elevator_up", "elevator_down")
    assert ACTIVITY_ID["walking"] == 0 and ACTIVITY_ID["lie_to_stand"] == 18


def test_misspelt_activity_field_and_comments_are_accepted_and_counted(tmp_path):
    root = write_usc_had(tmp_path, subjects=(3,), activities=(1, 11), trials=(3, 4))
    fields = trial_fields(3, 11, 4, trial_readings(300, 11, 3, 4))
    fields = {("activity_numbr" if k == "activity_number" else k): v for k, v in fields.items()}
    write_trial(root, 3, "a11t4.mat", fields)
    for trial in (3, 4):
        fields = trial_fields(3, 1, trial, trial_readings(300, 1, 3, trial))
        readings = fields.pop("sensor_readings")
        fields.update(comments="indoor", sensor_readings=readings)  # where the real files have it
        write_trial(root, 3, f"a1t{trial}.mat", fields)
    recs, report = read(root)
    assert by_file(recs)["Subject3/a11t4.mat"].labels[0] == ACTIVITY_ID["elevator_up"]
    assert report.repairs == {"field spelt 'activity_numbr' read as 'activity_number', files": 1}
    (note,) = [n for n in report.notes if "comments" in n]
    assert note.startswith("usc-had: 2 files") and "Subject3/a1t3.mat ('indoor')" in note


def test_the_published_errata_keep_the_file_name_and_are_counted(tmp_path):
    root = write_usc_had(tmp_path, subjects=(14,), activities=(2, 3), trials=(2,))
    write_trial(root, 14, "a3t2.mat", trial_fields(14, 2, 2, trial_readings(300, 3, 14, 2)))
    recs, report = read(root)
    assert by_file(recs)["Subject14/a3t2.mat"].labels[0] == ACTIVITY_ID["walking_right"]
    assert report.repairs == {ERRATUM_REPAIR: 1}
    # the same wrong header anywhere else is an error
    write_trial(root, 14, "a3t2.mat", trial_fields(14, 3, 2, trial_readings(300, 3, 14, 2)))
    write_trial(root, 14, "a2t2.mat", trial_fields(14, 3, 2, trial_readings(300, 2, 14, 2)))
    with pytest.raises(DataFormatError, match=r"a2t2\.mat: field 'activity_number' says '3'"):
        read(root)


def test_cli_info_shows_the_mapping_and_errors_name_the_file(capsys, tmp_path, monkeypatch):
    from fedhar.cli import main

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDHAR_DATA_DIR", raising=False)
    root = write_usc_had(tmp_path / "data", subjects=(7,), activities=(2, 11))
    assert main(["data", "info", "usc-had", "--data-dir", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "subjects     1" in out and "activities   2" in out
    assert "2 -> walking_left" in out and "11 -> elevator_up" in out and "10 -> lying" in out
    bad = write_trial(root, 7, "a2t1.mat", trial_fields(8, 2, 1, trial_readings(300)))
    assert main(["data", "info", "usc-had", "--data-dir", str(tmp_path / "data")]) == 2
    message = capsys.readouterr().err.split("\r")[-1]  # after the progress bar
    assert message.startswith(f"fedhar: error: {bad}: field 'subject' says '8'")
    assert "Traceback" not in message


def test_layout_registry_and_load(tmp_path, monkeypatch):
    from fedhar.data import loading

    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    root = write_usc_had(tmp_path / "data", subjects=(1, 2), activities=(1, 10), n=400)
    reader = get_reader("usc-had")
    assert isinstance(reader, UscHadReader)
    assert reader.locate(tmp_path / "data") == root  # data/usc-had/USC-HAD, as shared
    assert [p.name for p in reader.source_files(root)] == ["a1t1.mat", "a10t1.mat"] * 2
    prepared = loading.load("usc-had", data_dir=tmp_path / "data", cache=False)
    assert prepared.windows.class_counts() == {"walking": 4, "lying": 4}  # 200 samples at 50 Hz
    assert set(prepared.windows.subject) == {1, 2}
    download_form = write_usc_had(tmp_path / "dl", subjects=(1,), folder="usc-had")
    assert reader.locate(tmp_path / "dl") == download_form


# --------------------------------------------------------------------------- errors


def one_trial(tmp_path, **changes):
    """A tree of one subject (5) whose a4t2.mat has fields changed (None removes one)."""
    root = write_usc_had(tmp_path, subjects=(5,), activities=(4, 9), trials=(1, 2))
    fields = trial_fields(5, 4, 2, trial_readings(300, 4, 5, 2))
    for key, value in changes.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    return root, write_trial(root, 5, "a4t2.mat", fields)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"sensor_readings": None}, "'sensor_readings' is missing"),
        ({"sensor_readings": np.zeros((300, 5))}, "shape (300, 5); expected 6 columns"),
        ({"sensor_readings": np.zeros((300, 9))}, "expected 6 columns"),
        ({"sensor_readings": np.array([["1.0"] * 6] * 10)}, "not numeric"),
        ({"sensor_readings": np.zeros((0, 6))}, "empty trial"),
        ({"sensor_readings": np.r_[np.zeros((7, 6)), [[0, 0, np.nan, 0, 0, 0]]]}, "row 8 holds"),
        ({"sensor_readings": np.r_[np.zeros((3, 6)), np.full((1, 6), np.inf)]}, "row 4 holds"),
        ({"subject": "6"}, "field 'subject' says '6' but the folder Subject5 says 5"),
        ({"activity_number": "9"}, "field 'activity_number' says '9' but the file name says 4"),
        ({"trial": "1"}, "field 'trial' says '1' but the file name says 2"),
        ({"subject": None}, "field 'subject' is missing"),
        ({"activity_number": None}, "field 'activity_number' is missing"),
        ({"subject": np.array([5.0])}, "field 'subject' is not a text value"),
    ],
)
def test_malformed_trials_name_the_file(tmp_path, changes, words):
    root, path = one_trial(tmp_path, **changes)
    with pytest.raises(DataFormatError) as err:
        read(root)
    assert err.value.path == str(path)
    assert words in err.value.message


def test_a_file_that_is_not_a_mat_file(tmp_path):
    root, path = one_trial(tmp_path)
    for content in (b"", b"<html>not found</html>" * 20, path.read_bytes()[:400]):
        path.write_bytes(content)
        with pytest.raises(DataFormatError, match="not a readable MATLAB .mat file") as err:
            read(root)
        assert err.value.path == str(path)


@pytest.mark.parametrize(
    "name, words",
    [
        ("notes.txt", "unexpected name in Subject5/"),
        ("a4t2.mat.bak", "unexpected name in Subject5/"),
        ("A4T2.mat", "unexpected name in Subject5/"),
        ("a13t1.mat", "unknown activity number 13"),
    ],
)
def test_unexpected_names_in_a_subject_folder_are_named(tmp_path, name, words):
    root, path = one_trial(tmp_path)
    stray = path.parent / name
    stray.write_bytes(path.read_bytes())
    with pytest.raises(DataFormatError) as err:
        UscHadReader().source_files(root)
    assert err.value.path == str(stray)
    assert words in err.value.message


def test_two_files_for_one_trial(tmp_path):
    root, path = one_trial(tmp_path)
    (path.parent / "a04t2.mat").write_bytes(path.read_bytes())
    with pytest.raises(DataFormatError, match="a second file for activity 4 trial 2") as err:
        read(root)
    assert err.value.path == str(path) and err.value.message.endswith("(first: a04t2.mat)")


def test_an_unexpected_folder_in_the_root(tmp_path):
    root = write_usc_had(tmp_path, subjects=(1,), activities=(1,))
    (root / "Subject 2").mkdir()
    with pytest.raises(DataFormatError, match="unexpected folder") as err:
        read(root)
    assert err.value.path == str(root / "Subject 2")


def test_two_folders_for_one_subject(tmp_path):
    root = write_usc_had(tmp_path, subjects=(1,), activities=(1,))
    other = write_usc_had(tmp_path / "other", subjects=(1,), activities=(2,))
    (other / "Subject1").rename(root / "Subject01")
    with pytest.raises(DataFormatError, match=r"subject 1 \(first: Subject01\)") as err:
        read(root)
    assert err.value.path == str(root / "Subject1")


# --------------------------------------------------------------------------- real data


def shared_root() -> Path:
    """The shared real USC-HAD, or skip (looked for as fedhar.data.paths does)."""
    from fedhar.data.paths import PROJECT_ROOT

    dirs = [Path(p) for p in os.environ.get("FEDHAR_DATA_DIR", "").split(os.pathsep) if p]
    dirs.append(PROJECT_ROOT.parent / "shared" / "data")
    for directory in dirs:
        root = UscHadReader().locate(directory)
        if root is not None:
            return root
    pytest.skip(f"USC-HAD not found under {', '.join(map(str, dirs))}: shared real data absent")


@pytest.fixture(scope="module")
def real():
    root = shared_root()
    report = PrepareReport("usc-had")
    t0 = time.perf_counter()
    recs = list(UscHadReader().read(root, report))
    ws = harmonise(iter(recs), WindowConfig(), "usc-had", report)
    return recs, ws, report, time.perf_counter() - t0


def test_real_usc_had_facts(real):
    recs, ws, report, seconds = real
    assert report.files_read == 840 == report.recordings == len(recs)
    assert report.samples_in == 2_811_490
    assert {r.subject for r in recs} == set(range(1, 15))
    assert len(np.unique(ws.subject)) == 14
    assert len(ws) == 20_769  # 128-sample windows at 50 Hz, step 64 (fedhar data info usc-had)
    assert set(ws.class_counts()) == set(LABEL_MAP.values()) and len(LABEL_MAP) == 12
    assert all(r.rate == 100.0 for r in recs)


def test_real_usc_had_quirks_are_the_published_ones(real):
    _, _, report, _ = real
    assert report.repairs == {
        "field spelt 'activity_numbr' read as 'activity_number', files": 1,
        ERRATUM_REPAIR: 3,
    }
    (note,) = [n for n in report.notes if "comments" in n]
    assert note.startswith("usc-had: 3 files") and "Subject3/a1t5.mat ('indoor')" in note


def test_real_usc_had_units_and_axes(real):
    recs, _, _, _ = real
    standing = [r for r in recs if r.labels[0] == ACTIVITY_ID["standing"]]
    vertical = np.concatenate([r.signal[:, 0] for r in standing])
    assert np.median(vertical) == pytest.approx(STANDARD_GRAVITY, rel=0.1)  # x = gravity, m/s^2
    # turning: gyro_x (rad/s about the vertical) is positive walking left, negative walking
    # right, in every trial: what shows Subject14/a3t2's header (activity 2) is the erratum
    for rec in recs:
        if rec.labels[0] in (ACTIVITY_ID["walking_left"], ACTIVITY_ID["walking_right"]):
            left = rec.labels[0] == ACTIVITY_ID["walking_left"]
            assert (rec.signal[:, 3].mean() > 0) == left, rec.source
