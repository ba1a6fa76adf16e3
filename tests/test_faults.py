"""Bad inputs and faults (issue 13): each ends with exit status 2 and ONE line naming the
option or file, no traceback, and nothing lost or silently wrong; damaged caches are named
and rebuilt. The slow scenarios (Ctrl-C / SIGTERM on each engine, concurrent preparation and
pretraining) are in results/faults/probe.py, with its committed output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord
from safetensors.torch import save_file

from fedhar.cli import main
from fedhar.data import loading
from fedhar.data.synthetic import SyntheticConfig
from fedhar.errors import FedharError
from fedhar.model.checkpoint import CheckpointError, load_mae, save_mae
from fedhar.model.mae import MAEConfig, MaskedAutoencoder
from simulations.config import FLConfig
from simulations.out_dir import claim
from simulations.rounds import CHECKPOINT, save_checkpoint
from tests.fixtures.hapt import write_hapt
from tests.fixtures.uci_har import write_uci_har

SMALL = ["--synthetic-domains", "2", "--synthetic-subjects", "2", "--engine", "inline"]


def refused(capsys, argv, *names: str) -> str:
    """Run ``fedhar argv``: exit 2, one error line naming ``names``, no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("fedhar: error:")]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and len(err.strip().splitlines()[-1]) and errors[0] == err.strip().splitlines()[-1], err
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("argv, named", [
    (["--partition", "dirichlet", "--num-clients", "0"], "--num-clients"),
    (["--partition", "dirichlet", "--dirichlet-alpha", "0"], "--dirichlet-alpha"),
    (["--strategy", "hetlora", "--client-ranks", "4,x"], "--client-ranks"),
    (["--strategy", "hetlora", "--client-ranks", "0,-4"], "--client-ranks"),
    (["--strategy", "fedavg", "--client-ranks", "4,8"], "--client-ranks"),
    (["--rank", "100000"], "--rank"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),  # issue 27: was a traceback after pretraining
    (["--lr", "nan"], "--lr"),
    (["--lora-alpha", "nan"], "--lora-alpha"),
    (["--round-timeout", "inf"], "--round-timeout"),
    (["--inject-failure", "0:x"], "--inject-failure"),
    (["--inject-failure", "0:1:crash"], "--inject-failure"),
    (["--inject-failure", "0:9"], "--inject-failure"),
    (["--data", "nosuchdata"], "--data"),
    (["--data", "hapt", "--pretrain-data", "hapt"], "--pretrain-data"),
    (["--data", "uci-har", "--pretrain-data", "hapt"], "same people"),
    (["--resume", "--overwrite", "--out-dir", "x"], "--resume"),
])
def test_a_bad_option_is_refused_before_any_work(capsys, tmp_path, argv, named):
    out = tmp_path / "run"
    refused(capsys, ["fl", *argv, *(["--out-dir", out] if "--out-dir" not in argv else [])], named)
    assert not out.exists()  # nothing started


@pytest.mark.parametrize("argv, named", [
    (["--partition", "dirichlet", "--num-clients", "100000"], "--num-clients"),
    (["--strategy", "hetlora", "--client-ranks", "4,8,16"], "--client-ranks"),  # 2 clients
    (["--inject-failure", "5:1"], "--inject-failure"),
    (["--min-train-replies", "1000"], "--min-train-replies"),  # issue 27: every round aggregated nothing
    (["--min-train-replies", "2", "--fraction-train", "0.5"], "--min-train-replies"),
])
def test_an_option_that_does_not_fit_the_data_is_refused_before_training(capsys, tmp_path, argv, named):
    refused(capsys, ["fl", *argv, *SMALL, "--out-dir", tmp_path / "run"], named)
    assert not (tmp_path / "run" / "config.json").exists()


# --------------------------------------------------------------------------- out-dir


def test_an_earlier_run_is_never_overwritten_without_overwrite(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "rounds.csv").write_text("round\n1\n")
    refused(capsys, ["fl", *SMALL, "--out-dir", out], "--out-dir", "--overwrite")
    assert (out / "rounds.csv").read_text() == "round\n1\n"
    claim(out, resume=False, overwrite=True)  # what --overwrite does before the run
    assert not (out / "rounds.csv").exists()


def test_resume_without_a_checkpoint_keeps_the_earlier_tables(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "clients.csv").write_text("x\n")
    refused(capsys, ["fl", *SMALL, "--resume", "--out-dir", out], "--resume", str(out / CHECKPOINT))
    assert (out / "clients.csv").read_text() == "x\n"


def _checkpoint(out: Path) -> Path:
    save_checkpoint(out, 1, ArrayRecord({"w": torch.ones(64)}), SimpleNamespace(), SimpleNamespace(rows=[]),
                    FLConfig())
    return out / CHECKPOINT


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bit flip", "empty"])
def test_a_damaged_round_checkpoint_is_named_on_resume(capsys, tmp_path, damage):
    out = tmp_path / "run"
    out.mkdir()
    path = _checkpoint(out)
    data = bytearray(path.read_bytes())
    data = {"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b"",
            "bit flip": data[:-40] + bytes([data[-40] ^ 1]) + data[-39:]}[damage]
    path.write_bytes(bytes(data))
    refused(capsys, ["fl", *SMALL, "--resume", "--out-dir", out], str(path), "damaged")


def test_an_out_dir_that_is_a_file_or_not_writable_is_refused(capsys, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    refused(capsys, ["fl", *SMALL, "--out-dir", tmp_path / "file"], "--out-dir", "is a file")

    def denied(*args, **kwargs):  # (tests run as root, for whom chmod does not deny)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("simulations.out_dir.tempfile.TemporaryFile", denied)
    refused(capsys, ["fl", *SMALL, "--out-dir", tmp_path / "ro"], "--out-dir", "Permission denied")


# --------------------------------------------------------------------------- data files


@pytest.fixture
def hapt(tmp_path) -> Path:
    write_hapt(tmp_path / "data" / "hapt")
    return tmp_path / "data"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _info(capsys, data_dir: Path, *names: str, dataset: str = "hapt") -> str:
    return refused(capsys, ["data", "info", dataset, "--data-dir", data_dir], *names)


def test_an_extra_column_on_every_line_is_an_error_not_shifted_channels(capsys, hapt):
    acc = hapt / "hapt" / "RawData" / "acc_exp01_user01.txt"
    acc.write_text("".join(f"{i} {line}" for i, line in enumerate(_lines(acc))))
    _info(capsys, hapt, "acc_exp01_user01.txt:1:", "expected 3 columns, found 4")


def test_a_six_column_labels_file_says_so(capsys, hapt):
    labels = hapt / "hapt" / "RawData" / "labels.txt"
    labels.write_text("".join(f"9 {line}" for line in _lines(labels)))
    _info(capsys, hapt, "labels.txt:1:", "expected 5 columns, found 6")


def test_two_files_for_one_experiment_are_ambiguous(capsys, hapt):
    raw = hapt / "hapt" / "RawData"
    (raw / "acc_exp1_user01.txt").write_text((raw / "acc_exp01_user01.txt").read_text())
    _info(capsys, hapt, "acc_exp", "ambiguous")


def test_an_overflowing_value_names_file_and_line(capsys, hapt):
    acc = hapt / "hapt" / "RawData" / "acc_exp01_user01.txt"
    lines = _lines(acc)
    lines[4] = "1e308 0 0\n"
    acc.write_text("".join(lines))
    _info(capsys, hapt, "acc_exp01_user01.txt:5:", "out of range")


def test_a_utf16_file_is_called_an_encoding_problem(capsys, hapt):
    labels = hapt / "hapt" / "RawData" / "labels.txt"
    labels.write_bytes(labels.read_text().encode("utf-16"))
    _info(capsys, hapt, "labels.txt", "UTF-16")


def test_a_missing_labels_file_is_named(capsys, hapt):
    (hapt / "hapt" / "RawData" / "labels.txt").unlink()
    _info(capsys, hapt, "labels.txt", "missing")


def test_raw_data_that_is_a_file_is_named(capsys, tmp_path):
    (tmp_path / "hapt").mkdir()
    (tmp_path / "hapt" / "RawData").write_text("")
    _info(capsys, tmp_path, "RawData", "is a file")


def test_an_unreadable_file_is_named(capsys, hapt, monkeypatch):
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("fedhar.data.readers.hapt.pd.read_csv", denied)
    _info(capsys, hapt, "labels.txt", "Permission denied")


def test_published_uci_har_without_its_subject_file(capsys, tmp_path):
    root = write_uci_har(tmp_path / "uci-har")
    (root / "train" / "subject_train.txt").unlink()
    _info(capsys, tmp_path, "subject_train.txt", "missing", dataset="uci-har")


def test_a_utf16_subject_file_is_called_an_encoding_problem(capsys, tmp_path):
    root = write_uci_har(tmp_path / "uci-har")
    subject = root / "train" / "subject_train.txt"
    subject.write_bytes(subject.read_text().encode("utf-16"))
    _info(capsys, tmp_path, "subject_train.txt", "UTF-16", dataset="uci-har")


def test_an_explicit_data_dir_is_the_only_place_searched(capsys, hapt, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_DATA_DIR", str(hapt))  # a good copy elsewhere is not used
    (tmp_path / "mistyped").mkdir()
    _info(capsys, tmp_path / "mistyped", "not found", str(tmp_path / "mistyped"))
    assert "FEDHAR_DATA_DIR" not in capsys.readouterr().err


def test_config_json_records_where_the_data_was_read(hapt):
    from simulations.task import data_sources

    cfg = FLConfig(data="hapt", data_dir=str(hapt), heldout_data="synthetic")
    assert data_sources(cfg) == {"hapt": str((hapt / "hapt").resolve()), "synthetic": "generated"}


# --------------------------------------------------------------------------- caches


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


TINY = SyntheticConfig(n_domains=1, subjects_per_domain=2, seconds_per_activity=6.0)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bit flip", "json missing", "json garbage"])
def test_a_damaged_window_cache_is_named_and_rebuilt(cache, capsys, damage):
    first = loading.load("synthetic", synthetic=TINY)
    npz, meta = first.cache_file, first.cache_file.with_suffix(".json")
    data = npz.read_bytes()
    if damage == "json missing":
        meta.unlink()
    elif damage == "json garbage":
        meta.write_text("{")
    else:
        npz.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b"",
                         "bit flip": data[:200] + bytes([data[200] ^ 1]) + data[201:]}[damage])
    again = loading.load("synthetic", synthetic=TINY)
    assert not again.from_cache
    assert "damaged window cache" in capsys.readouterr().err
    np.testing.assert_array_equal(again.windows.x, first.windows.x)
    assert loading.load("synthetic", synthetic=TINY).from_cache  # and the rebuilt entry is good


def test_a_full_disk_leaves_no_temporary_file(cache, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("fedhar.data.loading.os.fdopen", Full)
    with pytest.raises(FedharError, match="cannot write the window cache.*No space left"):
        loading.load("synthetic", synthetic=TINY)
    assert [p.name for p in (cache / "windows").iterdir() if not p.name.endswith(".lock")] == []


def test_a_cache_dir_that_is_a_file_is_named(capsys, tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    refused(capsys, ["data", "info", "synthetic"], "FEDHAR_CACHE_DIR", "is a file")


# --------------------------------------------------------------------------- backbones


def _backbone(path: Path) -> Path:
    torch.manual_seed(0)
    save_mae(MaskedAutoencoder(MAEConfig(depth=1, decoder_depth=1)), path)
    return path


def test_a_backbone_with_bytes_overwritten_is_named(capsys, tmp_path):
    path = _backbone(tmp_path / "mae.safetensors")
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 256] = os.urandom(256)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        load_mae(path)
    refused(capsys, ["fl", *SMALL, "--backbone", path, "--out-dir", tmp_path / "run"], str(path), "damaged")


def test_a_backbone_with_nan_weights_is_named(tmp_path):
    path = _backbone(tmp_path / "mae.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}  # as if written by an older fedhar
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    next(v for v in tensors.values() if v.is_floating_point())[0] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=f"{path}.*non-finite"):
        load_mae(path)


def _saved_model(tmp_path: Path, mode: str = "lora") -> Path:
    from fedhar.model import Classifier
    from fedhar.model.adapters import prepare_for_finetune
    from fedhar.model.saved import save_model

    backbone = _backbone(tmp_path / "mae.safetensors")
    model = prepare_for_finetune(Classifier.from_mae(load_mae(backbone), 3), mode, rank=4, alpha=8)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)  # trained-looking: every saved part non-zero
    return save_model(model, tmp_path / "model", backbone, ["sitting", "standing", "walking"], 4, 8.0)


@pytest.mark.parametrize("part", ["adapter_model.safetensors", "head.safetensors", "backbone.safetensors",
                                  "encoder.safetensors"])
def test_every_saved_model_part_with_bytes_overwritten_is_named(capsys, tmp_path, part):
    """256 bytes of 0xff in any part: `fedhar evaluate` refuses the model, naming the file
    (issue 27: a damaged adapter was scored as if intact)."""
    from fedhar.model.saved import load_model

    model_dir = _saved_model(tmp_path, mode="full" if part == "encoder.safetensors" else "lora")
    load_model(model_dir)  # intact: loads
    path = model_dir / part
    data = bytearray(path.read_bytes())
    data[-300:-44] = b"\xff" * 256  # inside the tensors, past the header
    path.write_bytes(bytes(data))
    refused(capsys, ["evaluate", model_dir, "--data", "synthetic"], str(path), "damaged")


def test_a_damaged_model_description_is_named(capsys, tmp_path):
    model_dir = _saved_model(tmp_path)
    meta = model_dir / "fedhar_model.json"
    meta.write_bytes(meta.read_bytes()[:20] + b"\xff" * 256)
    refused(capsys, ["evaluate", model_dir, "--data", "synthetic"], str(meta), "damaged")


def test_a_full_disk_while_saving_a_model_leaves_no_partial_file(tmp_path, monkeypatch):
    """The backbone copy goes to a temporary name first: a failed copy leaves nothing, and the
    error names the file being written."""
    import shutil as shutil_module

    from fedhar.model.saved import copy_atomically

    source = _backbone(tmp_path / "mae.safetensors")
    target = tmp_path / "model" / "backbone.safetensors"
    target.parent.mkdir()

    def full(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil_module, "copyfile", full)
    with pytest.raises(OSError) as raised:
        copy_atomically(source, target)
    assert raised.value.filename == str(target) and raised.value.errno == 28
    assert list(target.parent.iterdir()) == []


def test_a_truncated_partial_pretraining_is_named_and_started_again(tmp_path, capsys):
    from fedhar.pretrain import _read_partial

    partial = tmp_path / "mae-x.partial.pt"
    torch.save({"model": {"w": torch.ones(1000)}, "epoch": 1}, partial)
    partial.write_bytes(partial.read_bytes()[:300])
    assert _read_partial(partial) is None
    assert str(partial) in capsys.readouterr().err and not partial.exists()


# --------------------------------------------------------------------------- runs that fail


def test_a_round_in_which_no_client_trained_fails_the_run(capsys, tmp_path):
    out = tmp_path / "run"
    line = refused(capsys, ["fl", *SMALL, "--rounds", "2", "--pretrain-epochs", "1", "--batch-size", "32",
                            "--inject-failure", "0:2,1:2", "--out-dir", out], "round 2: no client trained",
                   "inject-failure")
    assert "ClientAppException" in line
    # the checkpoint holds round 1 only: --resume continues from there, not from a poisoned round 2
    from simulations.rounds import read_checkpoint

    assert read_checkpoint(out / CHECKPOINT)["round"] == 1
    # rounds.csv is rewritten after every round: it holds the finished round 1 only
    assert list(pd.read_csv(out / "rounds.csv")["round"]) == [1]
    assert json.loads((out / "config.json").read_text())["data_read"] == {"synthetic": "generated"}


def test_the_summary_of_a_run_where_no_client_ever_replied(tmp_path):
    from simulations.server_app import summarise

    (tmp_path / "clients.csv").write_text("round,phase,node_id,status,error\n1,train,5,failed,boom\n")
    table = summarise(tmp_path / "clients.csv")
    assert table.loc[0, "clients_trained"] == 0 and table.loc[0, "failed"] == 1


def test_plotting_a_run_without_finished_rounds_names_its_table(tmp_path):
    from simulations.plots import NothingToPlot, accuracy_vs_bytes

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "tables" / "run", run)
    rounds = run / "rounds.csv"
    rounds.write_text(rounds.read_text().splitlines()[0] + "\n")  # the header only
    with pytest.raises(NothingToPlot, match=f"no finished rounds in {rounds}"):
        accuracy_vs_bytes([run], tmp_path / "out")


def test_resume_where_nothing_ran_yet_starts_at_round_one(tmp_path):
    claim(tmp_path / "new", resume=True, overwrite=False)  # (scripts pass --resume on every run)
    assert (tmp_path / "new").is_dir()


def test_run_lodo_takes_every_list_option_as_a_comma_string():
    """issue 27: backbones="none,other" was split into characters ("unknown backbone 'n'")."""
    from fedhar.api import _listed

    assert _listed("none,other", ("other",)) == ("none", "other")
    assert _listed("4, 8", (16,)) == (4, 8) and _listed("0.5", (0.7,)) == (0.5,)
    with pytest.raises(FedharError, match="'4,x' is not a comma-separated list of int"):
        _listed("4,x", (16,))


def test_fedhar_data_is_reachable_after_import_fedhar_alone():
    """issue 27: README's `import fedhar; fedhar.data.activities()` raised AttributeError."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import fedhar; print(len(fedhar.data.activities()) > 0)"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


# --------------------------------------------------------------------------- issue 27, second round


@pytest.mark.parametrize("option", ["--strategy", "--readers"])
def test_a_plugin_module_that_raises_at_import_is_one_line(capsys, tmp_path, monkeypatch, option):
    """Was the module's own traceback: now its exception and where it was raised, in one line."""
    name = f"broken_plugin_{option.strip('-')}"
    (tmp_path / f"{name}.py").write_text("import os\n\nraise RuntimeError('needs a GPU driver')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    refused(capsys, ["fl", option, f"{name}:Thing", *SMALL, "--out-dir", tmp_path / "run"],
            f"importing module {name!r} raised RuntimeError: needs a GPU driver", f"{tmp_path / name}.py:3")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def folder_dataset(tmp_path, monkeypatch) -> Path:
    """A folder dataset of 2 subjects walking (its registration stays in the test)."""
    from fedhar.data import registry

    monkeypatch.setattr(registry, "_READERS", dict(registry._READERS))
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "gait"
    root.mkdir()
    rng = np.random.default_rng(0)
    for s in (1, 2):
        signal = rng.normal(0, 1, (600, 6)) + [0, 0, 9.8, 0, 0, 0]
        np.save(root / f"s{s}.npy", signal)
    (root / "manifest.csv").write_text("file,subject,activity,rate_hz,acc_unit,gyro_unit\n"
                                       "s1.npy,1,walking,50,m/s^2,rad/s\ns2.npy,2,walking,50,m/s^2,rad/s\n")
    return root


def test_lodo_and_evaluate_take_readers_as_fl_does(capsys, tmp_path, folder_dataset):
    """fedhar lodo / evaluate --readers (issue 27: only fedhar fl had it), and a folder given as
    --data is told to come through --readers."""
    out = tmp_path / "lodo"
    refused(capsys, ["lodo", "--data", folder_dataset, "--out-dir", out],
            f"--data: unknown dataset '{folder_dataset}'", f"(a folder dataset: --readers {folder_dataset} --data gait)")
    refused(capsys, ["evaluate", tmp_path / "model", "--data", "gait"], "--data: unknown dataset 'gait'")
    # with --readers the names are known: the next check is the one that refuses
    refused(capsys, ["lodo", "--readers", folder_dataset, "--data", "gait", "--heldout-data", "other", "--out-dir", out],
            "--heldout-data other: not among --data gait")
    assert not out.exists()
    model_dir = _saved_model(tmp_path)
    assert main(["evaluate", str(model_dir), "--readers", str(folder_dataset), "--data", "gait"]) == 0
    assert "gait: accuracy" in capsys.readouterr().out


def test_a_second_run_into_an_out_dir_in_use_is_refused_before_any_work(capsys, tmp_path):
    """issue 27: was refused only when the first run wrote its tables (74 s in, after pretraining)."""
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from simulations.out_dir import claim; "
        f"claim(Path({str(out)!r}), False, False, hold_it=True); print('held', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        line = refused(capsys, ["fl", *SMALL, "--out-dir", out], f"--out-dir {out} is in use by another run (pid "
                                                                 f"{holder.pid}, started ")
        assert time.perf_counter() - t0 < 5 and "wait for it to end" in line
        assert sorted(p.name for p in out.iterdir()) == [".fedhar-run.lock"]  # nothing written, nothing pretrained
    finally:
        holder.communicate("", timeout=30)
    claim(out, False, False, hold_it=True)  # free again once that process ended
    claim(out, False, False, hold_it=True)  # (a process may claim its own out-dir again: --seeds, resume)


def test_ctrl_c_during_a_tune_fit_stops_tune_gracefully_then_exits_130(monkeypatch):
    """issue 27: Tune's own SIGINT handler made tuner.fit() return as if done: the sweep exited 0.
    graceful_interrupt hands the first Ctrl-C to Tune's graceful stop (SIGUSR1, the handler Tune
    sets in fit()) and raises KeyboardInterrupt when fit() returns (fedhar: exit 130)."""
    import signal

    from simulations.sweep_run import graceful_interrupt

    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    before = signal.getsignal(signal.SIGINT)
    tune_stopped, env_seen = [], []

    def fit():  # what Tune's fit() does with signals: SIGUSR1 (and SIGINT unless disabled) -> stop, return
        env_seen.append(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER"))
        signal.signal(signal.SIGUSR1, lambda *_: tune_stopped.append(True))
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C
        return "result grid"

    old_usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        with pytest.raises(KeyboardInterrupt):
            with graceful_interrupt():
                assert fit() == "result grid"
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)
    assert tune_stopped == [True] and env_seen == ["1"]
    assert signal.getsignal(signal.SIGINT) is before and "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
    with graceful_interrupt():  # no Ctrl-C: nothing raised
        pass


def test_a_finished_run_releases_its_out_dir(tmp_path):
    """A notebook that ran a federation must not keep its out-dir from a later `fedhar fl`."""
    import subprocess
    import sys

    from simulations.out_dir import releases_out_dir

    out = tmp_path / "run"

    @releases_out_dir
    def runner():
        claim(out, False, False, hold_it=True)

    runner()
    other = subprocess.run([sys.executable, "-c", (
        "from pathlib import Path; from simulations.out_dir import claim; "
        f"claim(Path({str(out)!r}), False, False, hold_it=True); print('held')")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert other.stdout.strip() == "held", other.stderr
