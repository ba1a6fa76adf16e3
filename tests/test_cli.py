"""The `fedhar` command line as a user meets it: help, truthful listing, clear errors."""

import pytest

from fedhar.cli import main
from tests.fixtures.hapt import shared_data_dir, write_hapt


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDHAR_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # ./data of the test, not of the developer


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_names_the_commands(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and "data" in out and "fl" in out and "fedhar data list" in out


def test_list_is_truthful(capsys, tmp_path):
    root = write_hapt(tmp_path / "mydata" / "hapt")
    code, out, _ = run(capsys, "data", "list", "--data-dir", str(tmp_path / "mydata"))
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert str(root) in lines["hapt"]
    # uci-har is derived from the HAPT raw data when no published folder exists
    assert str(root) in lines["uci-har"]
    assert "synthetic" in lines
    real = shared_data_dir() / "pamap2"
    if not real.exists():
        assert "not found" in lines["pamap2"]


def test_info_synthetic(capsys):
    code, out, _ = run(capsys, "data", "info", "synthetic", "--domains", "2", "--subjects", "3")
    assert code == 0
    assert "subjects     6" in out and "activities   6" in out
    assert "synthetic data" in out and "synthetic-d1/3" in out


def test_info_on_malformed_file_names_file_and_line_without_traceback(capsys, tmp_path):
    root = write_hapt(tmp_path / "bad" / "hapt")
    acc = sorted((root / "RawData").glob("acc_*.txt"))[0]
    lines = acc.read_text().splitlines()
    lines[4] = "0.1 abc 0.3"
    acc.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "data", "info", "hapt", "--data-dir", str(tmp_path / "bad"))
    assert code == 2
    message = err.split("\r")[-1]  # after the progress bar
    assert "Traceback" not in err and message.startswith(f"fedhar: error: {acc}:5: ")


def test_unknown_dataset_is_a_clear_error(capsys):
    code, _, err = run(capsys, "data", "info", "nonesuch")
    assert code == 2 and "unknown dataset 'nonesuch'" in err and "hapt" in err


def test_missing_dataset_says_where_it_looked(capsys, tmp_path):
    code, _, err = run(capsys, "data", "info", "pamap2", "--data-dir", str(tmp_path / "empty"))
    if (shared_data_dir() / "pamap2").exists():
        pytest.skip("a real PAMAP2 copy is in the shared data")
    assert code == 2 and "not found" in err and str(tmp_path / "empty") in err
    assert "fedhar data download pamap2" in err


def test_info_hapt_on_the_real_data(capsys):
    if not (shared_data_dir() / "hapt" / "RawData").is_dir():
        pytest.skip(f"HAPT not found at {shared_data_dir() / 'hapt'}: shared real data absent")
    code, out, _ = run(capsys, "data", "info", "hapt")
    assert code == 0
    assert "subjects     30" in out and "activities   12" in out and "windows      10929" in out
    assert "Published split: test subjects [2, 4, 9, 10, 12, 13, 18, 20, 24]" in out
