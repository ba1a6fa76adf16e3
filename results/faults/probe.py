"""The bad-input and fault probe of issue 13, as a script: every case runs the real `fedhar`
command in a subprocess and is classified

  clear      exit status 2 with one `fedhar: error:` line naming the file or option, no
             traceback (or, where the right answer is to repair: exit 0, the damaged file
             named on stderr, the result intact; or, for Ctrl-C / SIGTERM: stopped within
             seconds, a checkpoint of the last finished round only, no process left, and
             --resume finishes the run);
  traceback  a Python traceback instead of a message;
  silent     exit 0 (or another status) with results wrong, lost or unexplained.

    FEDHAR_CACHE_DIR=/tmp/probe-cache python results/faults/probe.py [--only NAME] [--fedhar CMD]

writes results/faults/probe.csv (one row per case) and prints the counts. ``--fedhar`` runs
another installation (e.g. an older checkout's .venv/bin/fedhar) through the same cases.
Slow cases (signals on three engines, concurrency) take a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.hapt import write_hapt  # noqa: E402
from tests.fixtures.uci_har import write_uci_har  # noqa: E402

TINY = ["--synthetic-domains", "2", "--synthetic-subjects", "2", "--pretrain-epochs", "1", "--batch-size", "32"]
FEDHAR = [sys.executable, "-m", "fedhar"]


@dataclass
class Result:
    name: str
    group: str
    verdict: str = ""
    code: int | None = None
    seconds: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)


def run(argv, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*FEDHAR, *map(str, argv)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def judge_refusal(p: subprocess.CompletedProcess, *names: str) -> tuple[str, str]:
    """clear | traceback | silent for a case that must be refused."""
    err = p.stderr
    lines = [line for line in err.splitlines() if line.startswith("fedhar: error:")]
    if "Traceback (most recent call last)" in err and not lines:
        return "traceback", err.strip().splitlines()[-1][:160]
    if p.returncode == 2 and len(lines) == 1 and all(n in lines[0] for n in names):
        return "clear", lines[0][:200]
    if p.returncode == 0:
        return "silent", "exit 0"
    return "unclear", (lines[0] if lines else err.strip()[-160:])[:200]


# --------------------------------------------------------------------------- the cases


def option_cases(work: Path):
    out = work / "opt-run"
    fl = ["fl", *TINY, "--engine", "inline", "--out-dir", out]
    table = [
        ("num-clients 0", ["--partition", "dirichlet", "--num-clients", "0"], "--num-clients"),
        ("more clients than windows", ["--partition", "dirichlet", "--num-clients", "100000"], "--num-clients"),
        ("dirichlet-alpha 0", ["--partition", "dirichlet", "--dirichlet-alpha", "0"], "--dirichlet-alpha"),
        ("client-ranks 4,x", ["--strategy", "hetlora", "--client-ranks", "4,x"], "--client-ranks"),
        ("client-ranks 0,-4", ["--strategy", "hetlora", "--client-ranks", "0,-4"], "--client-ranks"),
        ("client-ranks > clients", ["--strategy", "hetlora", "--client-ranks", "4,8,16"], "--client-ranks"),
        ("client-ranks with fedavg", ["--client-ranks", "4,8"], "--client-ranks"),
        ("client-modes > clients", ["--client-modes", "lora,qlora,lora"], "--client-modes"),
        ("rank 100000", ["--rank", "100000"], "--rank"),
        ("rank 0", ["--rank", "0"], "--rank"),
        ("seed -1", ["--seed", "-1"], "--seed"),
        ("seed 2^64", ["--seed", str(2**64)], "--seed"),
        ("min-train-replies above the clients", ["--min-train-replies", "1000"], "--min-train-replies"),
        ("lr nan", ["--lr", "nan"], "--lr"),
        ("lr -1", ["--lr", "-1"], "--lr"),
        ("lora-alpha nan", ["--lora-alpha", "nan"], "--lora-alpha"),
        ("round-timeout 0", ["--round-timeout", "0"], "--round-timeout"),
        ("test-fraction 1", ["--test-fraction", "1"], "--test-fraction"),
        ("server-momentum 1", ["--strategy", "fedavgm", "--server-momentum", "1"], "--server-momentum"),
        ("inject-failure typo", ["--inject-failure", "0:x"], "--inject-failure"),
        ("inject-failure kind", ["--inject-failure", "0:1:crash"], "--inject-failure"),
        ("inject-failure round", ["--inject-failure", "0:9"], "--inject-failure"),
        ("inject-failure client", ["--inject-failure", "7:1"], "--inject-failure"),
        ("data nosuchdata", ["--data", "nosuchdata"], "nosuchdata"),
        ("pretrain-data = data", ["--data", "hapt", "--pretrain-data", "hapt"], "--pretrain-data"),
        ("pretrain-data same people", ["--data", "uci-har", "--pretrain-data", "hapt"], "same people"),
        ("heldout-data = data", ["--heldout-data", "synthetic", "--data", "hapt"], ""),
        ("resume and overwrite", ["--resume", "--overwrite"], "--resume"),
        ("address with inline", ["--address", "auto"], "--address"),
    ]
    for name, argv, named in table:
        if name == "heldout-data = data":
            argv, named = ["--data", "uci-har", "--heldout-data", "hapt"], "same people"
        yield name, "options", lambda argv=argv, named=named: judge_refusal(run([*fl, *argv]), named)
    # (the option names of issue 24's command line: --data, --synthetic-*, --out-dir, --heldout-data)
    pre = ["pretrain", "--data", "synthetic", "--synthetic-domains", "2", "--synthetic-subjects", "2", "--out-dir", work / "pre"]
    for name, argv, named in [("pretrain epochs 0", ["--epochs", "0"], "--epochs"),
                              ("pretrain lr nan", ["--lr", "nan"], "--lr"),
                              ("pretrain seed -1", ["--seed", "-1"], "--seed")]:
        yield name, "options", lambda argv=argv, named=named: judge_refusal(run([*pre, *argv]), named)
    lodo = ["lodo", "--data", "synthetic", "--out-dir", work / "lodo"]
    for name, argv, named in [("lodo ranks 0", ["--ranks", "0"], "--ranks"),
                              ("lodo train-fraction 1.5", ["--train-fractions", "1.5"], "--train-fractions"),
                              ("lodo seeds -1", ["--seeds", "-1"], "--seeds"),
                              ("lodo held-out unknown", ["--heldout-data", "hapt"], "--heldout-data"),
                              ("lodo epochs 0", ["--epochs", "0"], "--epochs")]:
        yield name, "options", lambda argv=argv, named=named: judge_refusal(run([*lodo, *argv]), named)


def out_dir_cases(work: Path):
    fl = ["fl", *TINY, "--engine", "inline", "--rounds", "1"]

    def earlier():
        d = work / "earlier"
        d.mkdir(exist_ok=True)
        (d / "rounds.csv").write_text("round\n1\n")
        verdict = judge_refusal(run([*fl, "--out-dir", d]), "--overwrite")
        if (d / "rounds.csv").read_text() != "round\n1\n":
            return "silent", "earlier table replaced"
        return verdict

    def resume_missing():
        d = work / "resume-missing"
        d.mkdir(exist_ok=True)
        (d / "clients.csv").write_text("x\n")
        verdict = judge_refusal(run([*fl, "--resume", "--out-dir", d]), "checkpoint.pkl")
        return ("silent", "earlier table replaced") if (d / "clients.csv").read_text() != "x\n" else verdict

    def out_file():
        (work / "a-file").write_text("")
        return judge_refusal(run([*fl, "--out-dir", work / "a-file"]), "--out-dir")

    def out_readonly():
        if os.geteuid() == 0:  # root writes anywhere: a directory below a file is unwritable for all
            (work / "ro-parent").write_text("")
            return judge_refusal(run([*fl, "--out-dir", work / "ro-parent" / "run"]), "--out-dir")
        (work / "ro").mkdir(exist_ok=True)
        os.chmod(work / "ro", 0o500)
        return judge_refusal(run([*fl, "--out-dir", work / "ro" / "run"]), "--out-dir")

    def two_at_once():
        # issue 27: the second run was refused only when the first wrote its tables (74 s in)
        d = work / "two-at-once"
        first = subprocess.Popen([*FEDHAR, *map(str, [*fl, "--rounds", "2", "--out-dir", d])], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (d / ".fedhar-run.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.monotonic()
        second = run([*fl, "--rounds", "2", "--out-dir", d])
        seconds = time.monotonic() - t0
        first_code = first.wait(timeout=600)
        verdict, note = judge_refusal(second, "in use by another run")
        if verdict == "clear" and (first_code != 0 or seconds > 30):
            return "silent", f"second refused after {seconds:.0f} s; first exit {first_code}"
        return verdict, f"{note} ({seconds:.0f} s; the first run: exit {first_code})"

    yield "out-dir of an earlier run", "out-dir", earlier
    yield "resume without checkpoint", "out-dir", resume_missing
    yield "out-dir is a file", "out-dir", out_file
    yield "out-dir not writable", "out-dir", out_readonly
    yield "two runs into one out-dir at once", "out-dir", two_at_once


def data_cases(work: Path):
    def hapt(name):
        d = work / "data" / name
        write_hapt(d / "hapt")
        return d, d / "hapt" / "RawData"

    def info(d, *named, dataset="hapt"):
        return judge_refusal(run(["data", "info", dataset, "--data-dir", d]), *named)

    def extra_column():
        d, raw = hapt("extra-col")
        acc = raw / "acc_exp01_user01.txt"
        acc.write_text("".join(f"{i} {line}" for i, line in enumerate(acc.read_text().splitlines(True))))
        return info(d, "acc_exp01_user01.txt:1:")

    def labels_six():
        d, raw = hapt("labels6")
        lab = raw / "labels.txt"
        lab.write_text("".join(f"250 {line}" for line in lab.read_text().splitlines(True)))
        return info(d, "labels.txt:1:", "columns")

    def ambiguous():
        d, raw = hapt("ambiguous")
        (raw / "acc_exp1_user01.txt").write_text((raw / "acc_exp01_user01.txt").read_text())
        return info(d, "ambiguous")

    def overflow():
        d, raw = hapt("overflow")
        acc = raw / "acc_exp01_user01.txt"
        lines = acc.read_text().splitlines(True)
        lines[4] = "1e308 0 0\n"
        acc.write_text("".join(lines))
        return info(d, "acc_exp01_user01.txt:5:")

    def missing_labels():
        d, raw = hapt("no-labels")
        (raw / "labels.txt").unlink()
        return info(d, "labels.txt")

    def rawdata_file():
        d = work / "data" / "rawfile"
        (d / "hapt").mkdir(parents=True)
        (d / "hapt" / "RawData").write_text("")
        return info(d, "RawData")

    def length_mismatch():
        d, raw = hapt("length")
        gyro = raw / "gyro_exp02_user01.txt"
        gyro.write_text("".join(gyro.read_text().splitlines(True)[:-3]))
        return info(d, "gyro_exp02_user01.txt")

    def utf16_labels():
        d, raw = hapt("utf16")
        lab = raw / "labels.txt"
        lab.write_bytes(lab.read_text().encode("utf-16"))
        return info(d, "labels.txt", "UTF-16")

    def unreadable():
        d, raw = hapt("unreadable")
        if os.geteuid() == 0:  # root reads anything: a folder where a file must be is as unreadable
            (raw / "labels.txt").unlink()
            (raw / "labels.txt").mkdir()
        else:
            os.chmod(raw / "labels.txt", 0)
        return info(d, "labels.txt")

    def uci_no_subject():
        d = work / "data" / "uci-nosubject"
        write_uci_har(d / "uci-har")
        (d / "uci-har" / "train" / "subject_train.txt").unlink()
        return info(d, "subject_train.txt", dataset="uci-har")

    def uci_utf16_subject():
        d = work / "data" / "uci-utf16"
        write_uci_har(d / "uci-har")
        s = d / "uci-har" / "train" / "subject_train.txt"
        s.write_bytes(s.read_text().encode("utf-16"))
        return info(d, "subject_train.txt", "UTF-16", dataset="uci-har")

    def mistyped_data_dir():
        d, _ = hapt("good")
        p = run(["data", "info", "hapt", "--data-dir", work / "data" / "mistyped"], env={"FEDHAR_DATA_DIR": str(d)})
        return judge_refusal(p, "mistyped")

    def data_read_recorded():
        d, _ = hapt("recorded")
        out = work / "recorded-run"
        p = run(["fl", *TINY, "--engine", "inline", "--rounds", "1", "--data", "hapt",
                 "--data-dir", d, "--out-dir", out])
        if p.returncode != 0:
            return judge_refusal(p, "")
        import json

        read = json.loads((out / "config.json").read_text()).get("data_read", {})
        return ("clear", f"data_read {read}") if read.get("hapt") == str((d / "hapt").resolve()) else \
            ("silent", f"config.json does not say what was read: {read}")

    for name, fn in [("extra column in acc file", extra_column), ("6-column labels.txt", labels_six),
                     ("ambiguous acc_exp1 / acc_exp01", ambiguous), ("acc value 1e308", overflow),
                     ("labels.txt missing", missing_labels), ("RawData is a file", rawdata_file),
                     ("acc/gyro length mismatch", length_mismatch), ("UTF-16 labels.txt", utf16_labels),
                     ("unreadable labels.txt", unreadable), ("uci-har without subject file", uci_no_subject),
                     ("UTF-16 subject file", uci_utf16_subject), ("mistyped --data-dir", mistyped_data_dir),
                     ("config.json records data read", data_read_recorded)]:
        yield name, "data", fn


MANIFEST_HEADER = "file,subject,activity,rate_hz,acc_unit,gyro_unit,channels"


def folder_cases(work: Path):
    """Folder datasets (fedhar/data/readers/folder.py) of issue 27: its traceback table, its silent
    list and the folder route (lodo / evaluate --readers)."""
    import numpy as np

    rng = np.random.default_rng(0)

    def imu(n: int, acc: float = 9.8) -> np.ndarray:  # at rest-ish: |acc| ~ acc m/s^2, |gyro| ~ 0.9 rad/s
        return np.column_stack([rng.normal(0, 0.5, (n, 2)), acc + rng.normal(0, 0.5, n), rng.normal(0, 0.5, (n, 3))])

    def folder(name: str, rows: list[str], arrays: dict, header: str = MANIFEST_HEADER) -> Path:
        d = work / "folders" / name
        d.mkdir(parents=True, exist_ok=True)
        for f, a in arrays.items():
            if f.endswith(".csv"):
                columns = "time,ax,ay,az,gx,gy,gz" if a.shape[1] == 7 else "ax,ay,az,gx,gy,gz"
                (d / f).write_text(columns + "\n" + "".join(",".join(map(str, r)) + "\n" for r in a))
            else:
                np.save(d / f, a)
        (d / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")
        return d

    def info(d: Path, *named: str):
        return judge_refusal(run(["data", "info", d]), *named)

    def fl_readers(d: Path, *named: str):
        return judge_refusal(run(["fl", *TINY, "--engine", "inline", "--rounds", "1", "--readers", d, "--data",
                                  d.name, "--partition", "subject", "--out-dir", work / f"fl-{d.name}"]), *named)

    def short():
        return folder("short", ["a.npy,1,walking,50,m/s^2,rad/s,", "b.npy,2,walking,100,m/s^2,rad/s,"],
                      {"a.npy": imu(100), "b.npy": imu(200)})

    def absolute():
        target = folder("abs-target", ["a.npy,1,walking,50,m/s^2,rad/s,"], {"a.npy": imu(1000)}) / "a.npy"
        return folder("absolute", [f"{target},1,walking,50,m/s^2,rad/s,"], {})

    def latin1():
        d = folder("latin1", [], {"a.npy": imu(1000)})
        (d / "manifest.csv").write_bytes(f"{MANIFEST_HEADER}\na.npy,1,gehen\xe9,50,m/s^2,rad/s,\n".encode("latin-1"))
        return d

    def big_subject():
        return folder("bigsubject", ["a.npy,99999999999999999999,walking,50,m/s^2,rad/s,"], {"a.npy": imu(1000)})

    def warned(d: Path, needle: str, *named: str):
        """Exit 0 with a warning line naming the recording (the silent list of issue 27)."""
        p = run(["data", "info", d])
        lines = [line for line in p.stderr.splitlines() if line.startswith("fedhar: warning:")]
        if "Traceback (most recent call last)" in p.stderr:
            return "traceback", p.stderr.strip().splitlines()[-1][:160]
        if p.returncode == 0 and any(needle in line and all(n in line for n in named) for line in lines):
            return "clear", next(line for line in lines if needle in line)[:200]
        return ("silent" if p.returncode == 0 else "unclear"), (lines or p.stderr.strip().splitlines()[-1:] or ["?"])[0][:200]

    def shown(d: Path, *wanted: str, err: bool = False):
        """Exit 0 and every ``wanted`` text in the output of `data info`."""
        p = run(["data", "info", d])
        text = p.stderr if err else p.stdout
        if "Traceback (most recent call last)" in p.stderr:
            return "traceback", p.stderr.strip().splitlines()[-1][:160]
        missing = [w for w in wanted if w not in text]
        if p.returncode == 0 and not missing:
            return "clear", "; ".join(w.strip() for w in wanted)[:200]
        return ("silent" if p.returncode == 0 else "unclear"), f"missing {missing}: {p.stderr.strip()[-150:]}"

    def lodo_readers():
        d = folder("mylab", [f"s{s}_{a}.npy,{s},{a},50,m/s^2,rad/s," for s in (1, 2, 3, 4) for a in ("walking", "juggling")],
                   {f"s{s}_{a}.npy": imu(1500) * (1 if a == "walking" else 1.3) for s in (1, 2, 3, 4)
                    for a in ("walking", "juggling")})
        out = work / "lodo-readers"
        p = run(["lodo", "--readers", d, "--data", "mylab", "--backbones", "none", "--modes", "lora", "--epochs", "1",
                 "--threads", "1", "--out-dir", out])
        if p.returncode != 0:
            return judge_refusal(p, "")
        models = sorted((out / "models").glob("*/"))
        e = run(["evaluate", models[0], "--readers", d, "--data", "mylab"]) if models else None
        if e is None or e.returncode != 0 or "mylab: accuracy" not in e.stdout:
            return "silent", f"lodo ran; evaluate --readers: {e.stderr.strip()[-150:] if e else 'no model'}"
        return "clear", f"lodo: 1 row; evaluate: {e.stdout.strip()[:120]}"

    gyro_as_acc = folder("swapped", ["a.npy,1,walking,50,m/s^2,rad/s,3 4 5 0 1 2"], {"a.npy": imu(1000)})
    cases = [
        ("folder: every recording shorter than a window (data info)", lambda: info(short(), "short", "no 128-sample window")),
        ("folder: every recording shorter than a window (fl --readers)",
         lambda: fl_readers(short(), "short", "no 128-sample window")),
        ("folder: rate_hz 10000", lambda: info(folder("rate10k", ["a.npy,1,walking,10000,m/s^2,rad/s,"],
                                                      {"a.npy": imu(3000)}), "manifest.csv:2", "allow_rate")),
        ("folder: rate_hz 0.5", lambda: info(folder("rate05", ["a.npy,1,walking,0.5,m/s^2,rad/s,"],
                                                    {"a.npy": imu(300)}), "manifest.csv:2", "allow_rate")),
        ("folder: absolute path in file (data info)", lambda: info(absolute(), "manifest.csv:2", "absolute path")),
        ("folder: absolute path in file (fl --readers)", lambda: fl_readers(absolute(), "manifest.csv:2", "absolute")),
        ("folder: ../outside.npy", lambda: info(folder("outside", ["../abs-target/a.npy,1,walking,50,m/s^2,rad/s,"], {}),
                                                "manifest.csv:2", "leaves the dataset folder")),
        ("folder: subject past int64 (data info)", lambda: info(big_subject(), "manifest.csv:2", "64 bits")),
        ("folder: subject past int64 (fl --readers)", lambda: fl_readers(big_subject(), "manifest.csv:2", "64 bits")),
        ("folder: Latin-1 manifest (data info)", lambda: info(latin1(), "manifest.csv:2", "UTF-8")),
        ("folder: Latin-1 manifest (fl --readers)", lambda: fl_readers(latin1(), "manifest.csv:2", "UTF-8")),
        ("folder: channels ax ax ax gx gy gz", lambda: info(folder("dupchannels", ["a.csv,1,walking,50,m/s^2,rad/s,ax ax ax gx gy gz"],
                                                                 {"a.csv": imu(1000)}), "manifest.csv:2", "'ax' 3 times")),
        ("folder: gyro columns given as acc", lambda: warned(gyro_as_acc, "median |acc|", str(gyro_as_acc / "a.npy"))),
        ("folder: acc in m/s^2 declared g", lambda: warned(folder("tenfold", ["a.npy,1,walking,50,g,rad/s,"],
                                                                  {"a.npy": imu(1000)}), "median |acc| is 9", "from g")),
        ("folder: acc with gravity removed", lambda: warned(folder("nogravity", ["a.npy,1,walking,50,m/s^2,rad/s,"],
                                                                   {"a.npy": imu(1000, acc=0.0)}), "median |acc|")),
        ("folder: gyro in deg/s declared rad/s", lambda: warned(folder("degrees", ["a.npy,1,walking,50,m/s^2,rad/s,"],
                                                                       {"a.npy": imu(1000) * [1, 1, 1, 57, 57, 57]}),
                                                                "median |gyro|")),
        ("folder: rate_hz 50, time column at 100 Hz", lambda: warned(
            folder("clock", ["a.csv,1,walking,50,m/s^2,rad/s,ax ay az gx gy gz"],
                   {"a.csv": np.column_stack([np.arange(1000) / 100, imu(1000)])}), "its time column", "rate_hz 50")),
        ("folder: 'Walking ' beside 'walking'", lambda: shown(folder("spaces", ["a.npy,1,Walking ,50,m/s^2,rad/s,",
                                                                               "b.npy,2,walking,50,m/s^2,rad/s,"],
                                                                       {"a.npy": imu(1000), "b.npy": imu(1000)}),
                                                              "activities   1\n", "Walking -> walking")),
        ("folder: jogging (the union's running)", lambda: shown(folder("jogging", ["a.npy,1,jogging,50,m/s^2,rad/s,"],
                                                                        {"a.npy": imu(1000)}), "jogging -> running\n")),
        ("folder: a new activity marked", lambda: shown(folder("newact", ["a.npy,1,juggling,50,m/s^2,rad/s,"],
                                                                {"a.npy": imu(1000)}), "juggling -> juggling  (new)")),
        ("folder: 10 Hz upsampled 5x", lambda: shown(folder("tenhz", ["a.npy,1,walking,10,m/s^2,rad/s,"],
                                                             {"a.npy": imu(300)}), "upsampled ~5x", err=True)),
        ("folder: which rate each count is at", lambda: shown(folder("rates", ["a.npy,1,walking,100,m/s^2,rad/s,"],
                                                                     {"a.npy": imu(1000)}),
                                                              "samples (at their native rates)", "(50 Hz)")),
        ("folder: lodo --data DIR", lambda: judge_refusal(run(["lodo", "--data", work / "folders" / "mylab-absent",
                                                               "--out-dir", work / "lodo-dir"]), "--readers")),
        ("folder: lodo and evaluate --readers", lodo_readers),
    ]
    for name, fn in cases:
        yield name, "folder", fn


def plugin_cases(work: Path):
    """A user's module:Name that raises at import (issue 27: its own traceback)."""
    plugins = work / "plugins"
    plugins.mkdir(exist_ok=True)
    env = {"PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    for option in ("--strategy", "--readers"):
        module = f"raises_{option.strip('-')}"
        (plugins / f"{module}.py").write_text("raise RuntimeError('needs a licence server')\n")

        def case(option=option, module=module):
            p = run(["fl", *TINY, "--engine", "inline", option, f"{module}:Thing", "--out-dir", work / f"plug-{module}"],
                    env=env)
            return judge_refusal(p, module, "RuntimeError: needs a licence server", f"{module}.py:1")
        yield f"{option} module raising at import", "plugins", case


def cache_cases(work: Path):
    def damaged_window_cache(damage):
        def case():
            cache = work / f"cache-{damage.replace(' ', '-')}"
            env = {"FEDHAR_CACHE_DIR": str(cache)}
            argv = ["data", "info", "synthetic", "--synthetic-domains", "1", "--synthetic-subjects", "2"]
            first = run(argv, env=env)
            npz = next((cache / "windows").glob("*.npz"))
            data = npz.read_bytes()
            if damage == "json missing":
                npz.with_suffix(".json").unlink()
            else:
                npz.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b"",
                                 "bit flip": data[:200] + bytes([data[200] ^ 1]) + data[201:],
                                 "zeroed tail": data[:-64] + bytes(64)}[damage])
            again = run(argv, env=env)
            if "Traceback" in again.stderr:
                return "traceback", again.stderr.strip().splitlines()[-1][:160]
            same = [line for line in again.stdout.splitlines() if "prepared now" not in line] == \
                [line for line in first.stdout.splitlines() if "prepared now" not in line]
            if again.returncode == 0 and npz.name in again.stderr and same:
                return "clear", "named and rebuilt: " + again.stderr.strip().splitlines()[0][:150]
            return "silent" if again.returncode == 0 else "unclear", again.stderr.strip()[-160:]
        return case

    for damage in ("truncated", "garbage", "empty", "bit flip", "zeroed tail", "json missing"):
        yield f"window cache {damage}", "cache", damaged_window_cache(damage)

    def cache_is_file():
        (work / "cache-file").write_text("")
        return judge_refusal(run(["data", "info", "synthetic"], env={"FEDHAR_CACHE_DIR": str(work / "cache-file")}),
                             "FEDHAR_CACHE_DIR")

    def full_disk():
        # no small file system can be mounted here: every write to a file under the cache fails
        # with ENOSPC instead, as on a full disk
        cache = work / "cache-full"
        (cache / "windows").mkdir(parents=True)
        code = ("import os, sys, fedhar.cli as c, fedhar.data.loading as l\n"
                "real = os.fdopen\n"
                "class Full:\n"
                "    def __init__(s, fd, mode): s.f = real(fd, mode)\n"
                "    def __enter__(s): return s\n"
                "    def __exit__(s, *e): s.f.close()\n"
                "    def write(s, d): s.f.write(d[:1000]); raise OSError(28, 'No space left on device')\n"
                "l.os.fdopen = Full\n"
                "sys.exit(c.main(['data', 'info', 'synthetic']))\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "FEDHAR_CACHE_DIR": str(cache)})
        left = [f.name for f in (cache / "windows").iterdir() if not f.name.endswith(".lock")]
        verdict = judge_refusal(p, "window cache")
        return ("silent", f"left behind: {left}") if left else verdict

    yield "FEDHAR_CACHE_DIR is a file", "cache", cache_is_file
    yield "cache on a full disk", "cache", full_disk


def checkpoint_cases(work: Path):
    fl = ["fl", *TINY, "--engine", "inline", "--rounds", "2"]

    def base_run():
        d = work / "ckpt-base"
        if not (d / "checkpoint.pkl").exists():
            p = run([*fl, "--out-dir", d])
            assert p.returncode == 0, p.stderr[-2000:]
        return d

    def damaged_checkpoint(damage):
        def case():
            d = work / f"ckpt-{damage}"
            shutil.copytree(base_run(), d)
            ck = d / "checkpoint.pkl"
            data = ck.read_bytes()
            ck.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)),
                            "old pickle": pickle.dumps({"round": 1})}[damage])
            return judge_refusal(run([*fl, "--rounds", "3", "--resume", "--out-dir", d]), "checkpoint.pkl")
        return case

    for damage in ("truncated", "garbage", "old pickle"):
        yield f"round checkpoint {damage}", "checkpoint", damaged_checkpoint(damage)

    def backbone(damage):
        def case():
            cache = work / f"cache-bb-{damage}"
            env = {"FEDHAR_CACHE_DIR": str(cache)}
            pre = run(["pretrain", "--data", "synthetic", "--synthetic-domains", "2", "--synthetic-subjects", "2", "--epochs", "1"],
                      env=env)
            path = Path(pre.stdout.strip().splitlines()[-1])
            data = bytearray(path.read_bytes())
            if damage == "256 bytes overwritten":
                data[len(data) // 2: len(data) // 2 + 256] = b"\xff" * 256
            else:
                data = data[: len(data) // 2]
            copy = work / f"mae-{damage.replace(' ', '-')}.safetensors"
            copy.write_bytes(bytes(data))
            given = judge_refusal(run([*fl, "--backbone", copy, "--out-dir", work / f"bb-{len(damage)}"], env=env),
                                  str(copy))
            if given[0] != "clear":
                return given
            path.write_bytes(bytes(data))  # the cached one: named, pretrained again
            again = run(["pretrain", "--data", "synthetic", "--synthetic-domains", "2", "--synthetic-subjects", "2", "--epochs", "1"],
                        env=env)
            if again.returncode == 0 and str(path) in again.stderr and "pretraining it again" in again.stderr:
                return "clear", "--backbone refused; cached one named and pretrained again"
            return ("silent" if again.returncode == 0 else "unclear"), again.stderr.strip()[-200:]
        return case

    yield "backbone 256 bytes overwritten", "checkpoint", backbone("256 bytes overwritten")
    yield "backbone truncated", "checkpoint", backbone("truncated")

    def partial_truncated():
        cache = work / "cache-partial"
        env = {"FEDHAR_CACHE_DIR": str(cache)}
        argv = ["pretrain", "--data", "synthetic", "--synthetic-domains", "2", "--synthetic-subjects", "2", "--epochs", "2"]
        first = run(argv, env=env)
        final = Path(first.stdout.strip().splitlines()[-1])
        final.unlink()
        final.with_suffix(".json").unlink()
        final.with_suffix(".partial.pt").write_bytes(os.urandom(300))
        again = run(argv, env=env)
        if "Traceback" in again.stderr:
            return "traceback", again.stderr.strip().splitlines()[-1][:160]
        if again.returncode == 0 and ".partial.pt" in again.stderr and final.exists():
            return "clear", "named, pretraining started again"
        return ("silent" if again.returncode == 0 else "unclear"), again.stderr.strip()[-200:]

    yield "pretraining .partial.pt truncated", "checkpoint", partial_truncated


def failure_cases(work: Path):
    fl = ["fl", *TINY, "--engine", "inline", "--rounds", "2"]

    def all_fail():
        d = work / "all-fail"
        p = run([*fl, "--inject-failure", "0:2,1:2", "--out-dir", d])
        verdict = judge_refusal(p, "round 2: no client trained")
        # rounds.csv is written after every round (issue 27): it must hold round 1, which finished, and
        # nothing of round 2, which did not
        rounds = (d / "rounds.csv").read_text().splitlines() if (d / "rounds.csv").exists() else []
        if verdict[0] == "clear" and [r.split(",")[0] for r in rounds[1:]] != ["1"]:
            return "silent", f"rounds.csv should hold round 1 only, holds {len(rounds) - 1} rows"
        return verdict

    def all_nan():
        return judge_refusal(run([*fl, "--inject-failure", "0:1:nan,1:1:nan", "--out-dir", work / "all-nan"]),
                             "round 1: no client trained")

    def all_fail_ray():
        return judge_refusal(run(["fl", *TINY, "--rounds", "1", "--inject-failure", "0:1,1:1",
                                  "--out-dir", work / "all-fail-ray"]), "round 1: no client trained")

    yield "every client fails (inline)", "failure", all_fail
    yield "every reply NaN (inline)", "failure", all_nan
    yield "every client fails (ray)", "failure", all_fail_ray


def descendants(pid: int) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def signal_cases(work: Path):
    def interrupt(engine: str, sig: int):
        def case():
            d = work / f"sig-{engine}-{sig}"
            argv = ["fl", *TINY, "--rounds", "4", "--engine", engine, "--out-dir", d]
            proc = subprocess.Popen([*FEDHAR, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
            family: set[int] = set()
            deadline = time.monotonic() + 400
            while not (d / "checkpoint.pkl").exists() and proc.poll() is None and time.monotonic() < deadline:
                family |= descendants(proc.pid)
                time.sleep(0.2)
            if proc.poll() is not None:
                return "unclear", f"ended before round 1 finished: {proc.stdout.read()[-300:]}"
            time.sleep(1.0)  # into round 2
            family |= descendants(proc.pid)
            t0 = time.monotonic()
            proc.send_signal(sig)
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return "silent", "still running 60 s after the signal"
            stop_s = time.monotonic() - t0
            time.sleep(3)
            left = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            for p in left:  # clean up what the run left, by pid
                try:
                    psutil.Process(p).kill()
                except psutil.NoSuchProcess:
                    pass
            sys.path.insert(0, str(ROOT))
            from simulations.rounds import read_checkpoint

            saved = read_checkpoint(d / "checkpoint.pkl")["round"] if (d / "checkpoint.pkl").exists() else 0
            rows = {r["round"] for r in read_checkpoint(d / "checkpoint.pkl")["log_rows"]} if saved else set()
            notes = f"exit {proc.returncode} after {stop_s:.1f} s; checkpoint round {saved}; {len(left)} processes left"
            resumed = run([*argv, "--resume"])
            finished = resumed.returncode == 0 and (d / "rounds.csv").exists() and \
                len((d / "rounds.csv").read_text().splitlines()) == 5
            notes += f"; --resume {'finished 4 rounds' if finished else 'FAILED: ' + resumed.stderr[-200:]}"
            if "Traceback (most recent call last)" in out.split("fedhar:")[-1]:
                return "traceback", notes
            ok = (proc.returncode in (130, 143) and stop_s < 30 and not left and saved >= 1
                  and rows <= set(range(1, saved + 1)) and finished)
            return ("clear" if ok else "silent"), notes
        return case

    def sweep_interrupted():
        # issue 27: exited 0 ("1 ok, 1 pending"); now 130, and the same command finishes the sweep
        out = work / "sweep-ctrl-c"
        argv = ["sweep", ROOT / "simulations" / "sweeps" / "tiny.toml", "--out-dir", out, "--max-concurrent", "1"]
        proc = subprocess.Popen([*FEDHAR, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        family: set[int] = set()
        deadline = time.monotonic() + 400
        while not list(out.glob("tune/all/*/run/rounds.csv")) and proc.poll() is None and time.monotonic() < deadline:
            family |= descendants(proc.pid)
            time.sleep(0.2)
        if proc.poll() is not None:
            return "unclear", f"ended before a trial finished: {proc.stdout.read()[-300:]}"
        family |= descendants(proc.pid)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out_text, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return "silent", "still running 90 s after Ctrl-C"
        stop_s = time.monotonic() - t0
        time.sleep(3)
        left = [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        for p in left:
            try:
                psutil.Process(p).kill()
            except psutil.NoSuchProcess:
                pass
        again = run(argv, timeout=600)
        finished = again.returncode == 0 and "2 ok" in again.stdout
        notes = (f"exit {proc.returncode} after {stop_s:.0f} s; {len(left)} processes left; the same command again: "
                 f"{'2 ok' if finished else 'exit ' + str(again.returncode)}")
        if "Traceback (most recent call last)" in out_text.split("fedhar: interrupted")[-1]:
            return "traceback", notes
        return ("clear" if proc.returncode == 130 and not left and finished else "silent"), notes

    for engine in ("ray", "inline", "flwr"):
        for sig, name in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
            yield f"{name} on the {engine} engine", "signals", interrupt(engine, sig)
    yield "Ctrl-C on a sweep", "signals", sweep_interrupted


def concurrency_cases(work: Path):
    def together(argvs, env):
        procs = [subprocess.Popen([*FEDHAR, *map(str, a)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, **env}) for a in argvs]
        return [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]

    def prepare_twice(rebuild: bool):
        def case():
            failures = 0
            for attempt in range(3):
                env = {"FEDHAR_CACHE_DIR": str(work / f"cache-conc-{rebuild}-{attempt}")}
                argv = ["data", "prepare", "synthetic", *(["--rebuild"] if rebuild else [])]
                results = together([argv, argv], env)
                failures += sum(code != 0 for code, _, _ in results)
                left = list((work / f"cache-conc-{rebuild}-{attempt}" / "windows").glob("*.tmp*"))
                failures += len(left)
            return ("clear", "3 of 3 tries: both finished") if not failures else ("silent", f"{failures} failures")
        return case

    def pretrain_twice():
        env = {"FEDHAR_CACHE_DIR": str(work / "cache-conc-pretrain")}
        argv = ["pretrain", "--data", "synthetic", "--synthetic-domains", "2", "--synthetic-subjects", "2", "--epochs", "2"]
        results = together([argv, argv], env)
        trained = sum("pretraining MAE" in err for _, _, err in results)
        if any(code != 0 for code, _, _ in results):
            return "unclear", " / ".join(err[-150:] for _, _, err in results)
        return ("clear", "one pretrained, the other reused it") if trained == 1 else ("silent", f"{trained} trained")

    def foreign_ray():
        # RAY_ADDRESS names a cluster that is not there: a run that attached would hang or fail
        p = run(["fl", *TINY, "--rounds", "1", "--out-dir", work / "foreign-ray"], env={"RAY_ADDRESS": "127.0.0.1:1"},
                timeout=400)
        return ("clear", "ran on its own Ray instance") if p.returncode == 0 else judge_refusal(p, "")

    yield "data prepare twice at once", "concurrency", prepare_twice(False)
    yield "data prepare --rebuild twice at once", "concurrency", prepare_twice(True)
    yield "same backbone pretrained twice at once", "concurrency", pretrain_twice
    yield "another Ray cluster announced (RAY_ADDRESS)", "concurrency", foreign_ray


GROUPS = (option_cases, out_dir_cases, data_cases, folder_cases, plugin_cases, cache_cases, checkpoint_cases,
          failure_cases, signal_cases, concurrency_cases)


def main() -> int:
    global FEDHAR
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run the cases whose name or group contains this")
    parser.add_argument("--fedhar", help="the fedhar command to probe (default: this checkout's)")
    parser.add_argument("--out", type=Path, default=HERE / "probe.csv")
    args = parser.parse_args()
    if args.fedhar:
        FEDHAR = args.fedhar.split()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FEDHAR_CACHE_DIR", tempfile.mkdtemp(prefix="probe-cache-"))
    work = Path(tempfile.mkdtemp(prefix="fedhar-probe-"))
    results = []
    for group in GROUPS:
        for name, kind, case in group(work):
            if args.only and args.only not in name and args.only not in kind:
                continue
            t0 = time.perf_counter()
            try:
                verdict, note = case()
            except Exception as e:  # the probe's own trouble: shown, not counted as clear
                verdict, note = "unclear", f"probe error: {type(e).__name__}: {e}"
            r = Result(name, kind, verdict, None, time.perf_counter() - t0, note)
            results.append(r)
            print(f"{r.verdict:9s} {r.seconds:6.1f} s  [{kind}] {name}: {note}", flush=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "case", "verdict", "seconds", "note"])
        for r in results:
            w.writerow([r.group, r.name, r.verdict, f"{r.seconds:.1f}", r.note])
    counts = {v: sum(r.verdict == v for r in results) for v in ("clear", "traceback", "silent", "unclear")}
    print(f"\ntried {len(results)} / clear {counts['clear']} / traceback {counts['traceback']} / "
          f"silent {counts['silent']} / unclear {counts['unclear']}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if counts["clear"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
