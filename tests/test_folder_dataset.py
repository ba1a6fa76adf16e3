"""A folder of your own recordings plus manifest.csv: a dataset without code (fedhar/data/readers/folder.py)."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedhar.cli import main
from fedhar.data import labels, registry
from fedhar.data.harmonise import WindowConfig, harmonise
from fedhar.data.loading import load
from fedhar.data.schema import PrepareReport, Recording
from fedhar.errors import DataFormatError, FedharError

HEADER = "file,subject,activity,rate_hz,acc_unit,gyro_unit,channels"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Registrations stay in this test (added activities stay: ids are append-only); own cache."""
    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))


def imu(seconds: float, rate: float, freq: float, seed: int = 0) -> np.ndarray:
    """(T, 6): a sine per channel plus noise, acc around 1 (g-like) and gyro around 0."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.1, (len(t), 6))
    return np.sin(2 * np.pi * freq * t[:, None] + np.arange(6)) + noise + [1, 0, 0, 0, 0, 0]


def write_csv(path: Path, columns: list[str], values: np.ndarray) -> None:
    lines = [",".join(columns)] + [",".join(repr(float(v)) for v in row) for row in values]
    path.write_text("\n".join(lines) + "\n")


def write_folder(root: Path, rows: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return root


@pytest.fixture
def lab(tmp_path) -> Path:
    """Two subjects: a .csv at 100 Hz in g and deg/s (columns named, one extra), a .npy at 50 Hz
    in SI units with the gyro first and a 7th column, an .npz in the default layout."""
    root = tmp_path / "lab"
    root.mkdir()
    write_csv(root / "s1_walk.csv", ["time", "ax", "ay", "az", "gx", "gy", "gz"],
              np.column_stack([np.arange(2000) / 100, imu(20, 100, 2.0)]))
    np.save(root / "s1_juggle.npy", np.column_stack([imu(20, 50, 5.0, 1)[:, [3, 4, 5, 0, 1, 2]], np.ones(1000)]))
    np.savez(root / "s2_walk.npz", imu=imu(20, 50, 2.0, 2))
    return write_folder(root, [
        "s1_walk.csv,1,walking,100,g,deg/s,ax ay az gx gy gz",
        "s1_juggle.npy,1,juggling,50,m/s^2,rad/s,3 4 5 0 1 2",
        "s2_walk.npz,2,walking,50.0,m/s²,dps,",
    ])


def test_a_folder_is_harmonised_by_the_same_code_as_every_reader(lab):
    name = registry.register_folder(str(lab))
    assert name == "lab" and "lab" in registry.dataset_names()
    assert labels.activity_id("juggling") >= len(labels.ACTIVITIES)  # a new activity joins the label space
    prepared = load("lab", cache=False)
    # the same recordings converted by hand (g x 9.80665, deg/s x pi/180), through harmonise
    walk, walk2 = imu(20, 100, 2.0), imu(20, 50, 2.0, 2)
    by_hand = [
        Recording(np.column_stack([walk[:, :3] * 9.80665, walk[:, 3:] * (math.pi / 180)]),
                  np.full(2000, labels.activity_id("walking")), 100.0, 1, "s1_walk.csv"),
        Recording(imu(20, 50, 5.0, 1), np.full(1000, labels.activity_id("juggling")), 50.0, 1, "s1_juggle.npy"),
        Recording(np.column_stack([walk2[:, :3], walk2[:, 3:] * (math.pi / 180)]),
                  np.full(1000, labels.activity_id("walking")), 50.0, 2, "s2_walk.npz"),
    ]
    expected = harmonise(by_hand, WindowConfig(), "lab", PrepareReport("lab"))
    ws = prepared.windows
    assert ws.x.shape == (len(expected), 6, 128) and len(ws) == 3 * 14
    np.testing.assert_array_equal(ws.x, expected.x)
    np.testing.assert_array_equal(ws.y, expected.y)
    np.testing.assert_array_equal(ws.subject, expected.subject)
    assert set(ws.dataset) == {"lab"}
    assert prepared.report.files_read == prepared.report.recordings == 3


def test_registering_is_idempotent_and_paths_become_absolute(lab, monkeypatch):
    monkeypatch.chdir(lab.parent)
    assert registry.register_folder("./lab") == registry.register_folder(str(lab)) == "lab"
    assert registry.register_folder(f"mine={lab}") == "mine"
    registry.load_readers(f"./lab,mine={lab}")  # the run config's form: every process repeats it
    assert registry.absolute_readers("./lab, tests.fixtures.my_dataset:JuggleReader") == (
        f"lab={lab},tests.fixtures.my_dataset:JuggleReader")
    from simulations.config import FLConfig

    assert FLConfig(readers="./lab", data="lab", partition="subject").datasets == ["lab"]
    with pytest.raises(FedharError, match=r"--data: unknown dataset './lab'.* \(a folder dataset: --readers ./lab "
                                          r"--data lab\)"):
        FLConfig(data="./lab")
    with pytest.raises(FedharError, match="is not a dataset name"):
        registry.register_folder(str(write_folder(lab.parent / "My Lab", ["x.npy,1,walking,50,g,rad/s,"])))


def test_a_recording_shorter_than_a_window_is_counted(tmp_path):
    root = tmp_path / "short"
    root.mkdir()
    np.save(root / "long.npy", imu(10, 100, 2.0))
    np.save(root / "short.npy", imu(1, 100, 2.0))  # 1 s: 50 samples at 50 Hz, no window
    write_folder(root, ["long.npy,1,walking,100,g,deg/s,", "short.npy,2,walking,100,g,deg/s,"])
    registry.register_folder(str(root))
    report = load("short", cache=False).report
    assert report.recordings == 2 and report.samples_in == 1100
    assert report.dropped["samples in activity runs shorter than a window"] == 50


GOOD = "a.npy,1,walking,50,g,deg/s,"

# (what, manifest rows or None for no manifest, the message: manifest.csv:<line>: ...)
MANIFEST_ERRORS = [
    ("no manifest", None, r"manifest.csv: file is missing: a folder dataset lists its recordings in manifest.csv"),
    ("missing column", ["file,subject,activity,acc_unit,gyro_unit", "a.npy,1,walking,g,deg/s"],
     r"manifest.csv:1: missing column 'rate_hz'"),
    ("unknown column", ["file,subject,activity,rate_hz,acc_unit,gyro_unit,channel", GOOD],
     r"manifest.csv:1: unknown column 'channel'"),
    ("missing file", [HEADER, GOOD, "b.npy,1,walking,50,g,deg/s,"], r"manifest.csv:3: b.npy: file is missing"),
    ("duplicate recording", [HEADER, GOOD, "./a.npy,2,sitting,50,g,deg/s,"],
     r"manifest.csv:3: a.npy is listed twice \(first on line 2\)"),
    ("unknown unit", [HEADER, "a.npy,1,walking,50,G,deg/s,"], r"manifest.csv:2: unknown acc_unit 'G' \(known: "),
    ("unknown gyro unit", [HEADER, "a.npy,1,walking,50,g,rpm,"], r"manifest.csv:2: unknown gyro_unit 'rpm'"),
    ("rate 0", [HEADER, "a.npy,1,walking,0,g,deg/s,"], r"manifest.csv:2: rate_hz must be > 0 Hz, got 0"),
    ("rate text", [HEADER, "a.npy,1,walking,fast,g,deg/s,"], r"manifest.csv:2: rate_hz 'fast' is not a number"),
    ("subject", [HEADER, "a.npy,S01,walking,50,g,deg/s,"], r"manifest.csv:2: subject 'S01' is not an integer"),
    ("cells", [HEADER, "a.npy,1,walking,50,g"], r"manifest.csv:2: expected 7 comma-separated cells .*found 5"),
    ("file type", [HEADER, "a.txt,1,walking,50,g,deg/s,"], r"manifest.csv:2: a.txt: unknown file type"),
    ("channels", [HEADER, "a.npy,1,walking,50,g,deg/s,0 1 2"], r"manifest.csv:2: channels names 3 columns"),
    ("empty", [HEADER], r"manifest.csv: lists no recordings"),
    # issue 27: each of these was a traceback or accepted silently
    ("absolute path", [HEADER, "/tmp/a.npy,1,walking,50,g,deg/s,"],
     r"manifest.csv:2: /tmp/a.npy: an absolute path; a recording is given relative to the dataset folder"),
    ("outside the folder", [HEADER, "sub/../../a.npy,1,walking,50,g,deg/s,"],
     r"manifest.csv:2: sub/../../a.npy: leaves the dataset folder"),
    ("subject past int64", [HEADER, "a.npy,9223372036854775808,walking,50,g,deg/s,"],
     r"manifest.csv:2: subject 9223372036854775808 does not fit 64 bits"),
    ("rate 10000", [HEADER, "a.npy,1,walking,10000,g,deg/s,"],
     r"manifest.csv:2: rate_hz 10000 is outside 10-2000 Hz: .* add a column allow_rate"),
    ("rate 0.5", [HEADER, "a.npy,1,walking,0.5,g,deg/s,"], r"manifest.csv:2: rate_hz 0.5 is outside 10-2000 Hz"),
    ("allow_rate value", [HEADER + ",allow_rate", "a.npy,1,walking,5,g,deg/s,,true"],
     r"manifest.csv:2: allow_rate is 'yes' or empty, got 'true'"),
    ("channel twice", [HEADER, "a.npy,1,walking,50,g,deg/s,0 0 0 3 4 5"],
     r"manifest.csv:2: channels names column '0' 3 times"),
    ("csv channel twice", [HEADER, "a.csv,1,walking,50,g,deg/s,ax ax ay gx gy gz"],
     r"manifest.csv:2: channels names column 'ax' 2 times"),
    ("activity blank", [HEADER, "a.npy,1, - ,50,g,deg/s,"], r"manifest.csv:2: empty activity cell"),
]


@pytest.mark.parametrize("what,rows,message", MANIFEST_ERRORS, ids=[e[0] for e in MANIFEST_ERRORS])
def test_a_bad_manifest_is_one_line_naming_its_line(tmp_path, what, rows, message):
    root = tmp_path / "bad"
    root.mkdir()
    np.save(root / "a.npy", imu(5, 50, 1.0))
    (root / "a.csv").write_text("ax,ay,az,gx,gy,gz\n1,2,3,4,5,6\n")
    if rows is not None:
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataFormatError) as e:
        registry.register_folder(str(root))
    assert re.fullmatch(re.escape(str(root)) + "/" + message + ".*", str(e.value)), str(e.value)
    assert "\n" not in str(e.value)


def _bad_csv(root: Path, text: str) -> str:
    (root / "r.csv").write_text(text)
    return "r.csv,1,walking,50,g,deg/s,"


RECORDING_ERRORS = [
    ("non-numeric cell", lambda r: _bad_csv(r, "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n1,2,3,4,5,6\n1,2,x,4,5,6\n"),
     r"r.csv:3: not a number in column acc_z: 'x'"),
    ("short row", lambda r: _bad_csv(r, "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n1,2,3,4,5,6\n1,2,3,4,5\n"),
     r"r.csv:3: expected 6 comma-separated cells, found 5 \(truncated row\?\)"),
    ("long row", lambda r: _bad_csv(r, "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n1,2,3,4,5,6,7\n"),
     r"r.csv:2: expected 6 comma-separated cells, found 7"),
    ("missing channel", lambda r: _bad_csv(r, "ax,ay,az,gx,gy,gz\n1,2,3,4,5,6\n"),
     r"r.csv:1: no column 'acc_x' \(fedhar's default channel names\)"),
    ("wrong column count", lambda r: np.save(r / "w.npy", np.zeros((10, 7))) or "w.npy,1,walking,50,g,deg/s,",
     r"w.npy: has 7 columns; without a channels cell in manifest.csv:2 it must have exactly 6"),
    ("channel out of range", lambda r: np.save(r / "w.npy", np.zeros((10, 6))) or "w.npy,1,walking,50,g,deg/s,1 2 3 4 5 6",
     r"w.npy: has 6 columns; the channels of manifest.csv:2 name columns 1 2 3 4 5 6"),
    ("two arrays", lambda r: np.savez(r / "w.npz", a=np.zeros((9, 6)), b=np.zeros(9)) or "w.npz,1,walking,50,g,deg/s,",
     r"w.npz: holds 2 arrays \(a, b\); a recording .npz holds exactly one"),
    ("nan", lambda r: np.save(r / "w.npy", np.array([[0.0] * 6, [0, 0, np.nan, 0, 0, 0]])) or GOOD.replace("a.", "w."),
     r"w.npy: row 2 holds a non-finite value \(NaN or inf\)"),
    ("not an array", lambda r: (r / "w.npy").write_text("hello") and "w.npy,1,walking,50,g,deg/s,",
     r"w.npy: not a readable .npy file"),
    ("no samples", lambda r: _bad_csv(r, "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n"), r"r.csv: no samples"),
]


@pytest.mark.parametrize("what,make,message", RECORDING_ERRORS, ids=[e[0] for e in RECORDING_ERRORS])
def test_a_bad_recording_is_one_line_naming_the_file(tmp_path, what, make, message):
    root = tmp_path / "bad"
    root.mkdir()
    write_folder(root, [make(root)])
    registry.register_folder(str(root))
    with pytest.raises(DataFormatError) as e:
        load("bad", cache=False)
    assert re.fullmatch(re.escape(str(root)) + "/" + message + ".*", str(e.value)), str(e.value)


def test_data_info_on_a_folder(lab, capsys):
    assert main(["data", "info", str(lab)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^windows\s+42\b", out, re.M) and re.search(r"^subjects\s+2$", out, re.M)
    assert "juggling -> juggling" in out and "100 Hz, acc g, gyro deg/s" in out
    (lab / "manifest.csv").write_text(HEADER + "\ns1_walk.csv,1,walking,-5,g,deg/s,\n")
    assert main(["data", "info", f"other={lab}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fedhar: error: {lab}/manifest.csv:2: rate_hz must be > 0 Hz, got -5"


def readme_example() -> tuple[str, list[str]]:
    """The manifest.csv and the `fedhar fl` command of README's "Bring your own dataset"."""
    section = README.read_text().split("### Bring your own dataset", 1)[1].split("\n### ", 1)[0]
    manifest = re.search(r"```csv\n(.*?)```", section, re.S).group(1)
    command = re.search(r"^(fedhar fl .*)$", section, re.M).group(1)
    return manifest, command.split()


@pytest.mark.slow
def test_the_readme_example_federates_on_ray(tmp_path, monkeypatch):
    """README's worked example as written (recordings generated), tiny backbone, on the Ray engine."""
    manifest, command = readme_example()
    root = tmp_path / "mylab"
    root.mkdir()
    (root / "manifest.csv").write_text(manifest)
    for i, row in enumerate(pd.read_csv(root / "manifest.csv", keep_default_na=False).itertuples()):
        signal = imu(60, row.rate_hz, 2.0 if row.activity == "walking" else 5.0, seed=i)
        if row.file.endswith(".csv"):
            write_csv(root / row.file, ["time", *row.channels.split()],
                      np.column_stack([np.arange(len(signal)) / row.rate_hz, signal]))
        else:
            np.save(root / row.file, signal)
    monkeypatch.chdir(tmp_path)
    assert command[:2] == ["fedhar", "fl"] and "--engine" not in command
    tiny = ["--engine", "ray", "--pretrain-epochs", "1", "--synthetic-domains", "2", "--synthetic-subjects", "3",
            "--batch-size", "32", "--out-dir", str(tmp_path / "run")]
    assert main(command[1:] + tiny) == 0
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    assert len(rounds) == 2 and (rounds["failed"] == 0).all() and (rounds["clients_trained"] >= 2).all()
    assert rounds["accuracy"].notna().all()


def test_a_manifest_not_in_utf8_is_named_with_its_line(tmp_path, capsys):
    root = tmp_path / "latin"
    root.mkdir()
    np.save(root / "a.npy", imu(5, 50, 1.0))
    (root / "manifest.csv").write_bytes(f"{HEADER}\na.npy,1,gehen\xe9,50,g,deg/s,\n".encode("latin-1"))
    assert main(["data", "info", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fedhar: error: {root}/manifest.csv:2: not UTF-8 text (byte 0xe9): save it as UTF-8 (e.g. iconv -f " \
                  "latin1 -t utf-8)"


def test_a_rate_outside_the_range_is_read_with_allow_rate(tmp_path):
    root = write_folder(tmp_path / "slow", [])
    np.save(root / "a.npy", imu(200, 5, 0.5))
    (root / "manifest.csv").write_text(f"{HEADER},allow_rate\na.npy,1,walking,5,g,deg/s,,yes\n")
    registry.register_folder(str(root))
    assert len(load("slow", cache=False).windows) == 1 + (200 * 50 - 128) // 64


def test_a_folder_without_a_single_window_is_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "short", ["a.npy,1,walking,100,g,deg/s,", "b.npy,2,walking,50,g,deg/s,"])
    np.save(root / "a.npy", imu(2, 100, 2.0))  # 100 samples at 50 Hz: no 128-sample window
    np.save(root / "b.npy", imu(1, 50, 2.0))
    assert main(["data", "info", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"fedhar: error: {root}: no 128-sample window at 50 Hz (2.56 s) in 2 recordings of 250 samples (at "
                   "their native rates): every recording or activity run is shorter than a window, or unlabelled "
                   "(dropped: 150 samples in activity runs shorter than a window (at 50 Hz))")


def test_activity_names_are_normalised_and_merged_and_new_ones_marked(tmp_path, capsys):
    root = write_folder(tmp_path / "names", ["a.npy,1,Walking ,50,g,deg/s,", "b.npy,1,walking,50,g,deg/s,",
                                             "c.npy,2,jogging,50,g,deg/s,", "d.npy,2,Rope Skipping,50,g,deg/s,"])
    for i, f in enumerate("abcd"):
        np.save(root / f"{f}.npy", imu(10, 50, 2.0, seed=i))
    assert labels.normalise_activity(" Walking Upstairs ") == "upstairs"
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^activities\s+3$", out, re.M)  # walking, running, rope_skipping: no class 'Walking '
    assert re.search(r"Walking -> walking$", out, re.M) and re.search(r"jogging -> running$", out, re.M)
    assert re.search(r"Rope Skipping -> rope_skipping  \(new\)$", out, re.M)
    ws = load("names").windows
    assert sorted(set(np.asarray(labels.activities())[ws.y])) == ["rope_skipping", "running", "walking"]


def test_implausible_magnitudes_are_warned_naming_the_recording(tmp_path, capsys):
    rng = np.random.default_rng(0)
    good = np.column_stack([rng.normal(0, 1, (1000, 2)), 9.8 + rng.normal(0, 1, 1000), rng.normal(0, 0.5, (1000, 3))])
    root = write_folder(tmp_path / "units", ["good.npy,1,walking,50,m/s^2,rad/s,",
                                             "swapped.npy,1,sitting,50,m/s^2,rad/s,3 4 5 0 1 2",
                                             "tenfold.npy,2,walking,50,g,rad/s,",
                                             "slow.npy,2,sitting,10,m/s^2,deg/s,"])
    np.save(root / "good.npy", good)
    np.save(root / "swapped.npy", good)
    np.save(root / "tenfold.npy", good)  # m/s^2 declared g
    np.save(root / "slow.npy", good[:200] * [1, 1, 1, 60, 60, 60])  # gyro in deg/s: fine
    assert main(["data", "info", str(root)]) == 0
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if line.startswith("fedhar: warning:")]
    assert [line.split(": ")[2] for line in warned] == [str(root / "swapped.npy"), str(root / "swapped.npy"),
                                                        str(root / "tenfold.npy")]
    assert re.search(r"median \|acc\| is 0\.[6-9]", warned[0]) and "outside 5-20" in warned[0] and "manifest.csv:3" in warned[0]
    assert re.search(r"median \|gyro\| is (9\.[5-9]|10\.)", warned[1]) and "well under 5" in warned[1]
    assert re.search(r"median \|acc\| is 9[4-8] m/s\^2 after conversion from g", warned[2])
    assert "fedhar: note: units: recordings at ~10 Hz are upsampled ~5x to 50 Hz: their windows hold nothing " \
           "above ~5 Hz" in err
    assert out.count("Warning: ") == 3 and "Note: units: recordings at ~10 Hz are upsampled ~5x" in out
    assert "Read: 4 files, 4 recordings, 3200 samples (at their native rates)" in out


def test_a_time_column_that_contradicts_rate_hz_is_warned(tmp_path, capsys):
    signal = np.column_stack([np.zeros((600, 2)), np.full(600, 9.8), np.zeros((600, 3))])
    root = write_folder(tmp_path / "clock", ["seconds.csv,1,walking,100,m/s^2,rad/s,ax ay az gx gy gz",
                                             "millis.csv,1,sitting,100,m/s^2,rad/s,ax ay az gx gy gz",
                                             "wrong.csv,2,walking,50,m/s^2,rad/s,ax ay az gx gy gz"])
    for name, times in (("seconds", np.arange(600) / 100), ("millis", np.arange(600) * 10.0),
                        ("wrong", 1.7e9 + np.arange(600) / 100)):  # wrong: 100 Hz, declared 50
        write_csv(root / f"{name}.csv", ["time", "ax", "ay", "az", "gx", "gy", "gz"], np.column_stack([times, signal]))
    assert main(["data", "info", str(root)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fedhar: warning:")]
    assert len(warned) == 1 and warned[0].startswith(f"fedhar: warning: {root / 'wrong.csv'}: its time column steps by "
                                                     "0.01 (median): 100 Hz in s, 1e+05 Hz in ms")
    assert "none is within 10% of rate_hz 50 (manifest.csv:4), which is the rate used" in warned[0]
