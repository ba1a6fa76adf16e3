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
    code, out, _ = run(capsys, "data", "info", "synthetic", "--synthetic-domains", "2", "--synthetic-subjects", "3")
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


def _parsers(parser):
    """The parser and every sub-command's parser under it."""
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _parsers(sub)


def test_every_option_of_every_sub_command_has_help_and_shows_defaults_once():
    from fedhar.cli import build_parser

    missing, bad = [], []
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if action.dest in ("help", "version") or not (action.option_strings or action.dest != "command"):
                continue
            if type(action).__name__ == "_SubParsersAction":
                continue
            text = action.help() if callable(action.help) else action.help  # --strategy's: computed on --help
            if not (text or "").strip():
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
        text = parser.format_help()
        for wrong in ("%%", "(default: None)", "(default: ('", "(default: ["):
            if wrong in text:
                bad.append(f"{parser.prog}: {wrong}")
        bad += [f"{parser.prog}: {line.strip()}" for line in text.splitlines() if line.count("(default:") > 1]
    assert not missing, f"options without help: {missing}"
    assert not bad, f"badly shown defaults: {bad}"


def test_an_fl_option_is_defined_once_with_its_default_and_help(capsys):
    """FLConfig's field holds default and help; `fedhar fl --help` shows that very text."""
    from dataclasses import fields

    from simulations.config import FLConfig

    assert all(f.metadata.get("help", "").strip() for f in fields(FLConfig))
    assert main(["fl", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    rank = next(f for f in fields(FLConfig) if f.name == "rank")
    assert f"--rank RANK {rank.metadata['help']} (default: {rank.default})" in text


@pytest.mark.parametrize("argv, suggestion", [
    (["fl", "--data", "ucihar"], "did you mean 'uci-har'?"),
    (["fl", "--heldout-data", "synthetc"], "did you mean 'synthetic'?"),
    (["fl", "--strategy", "fedavgg"], "did you mean 'fedavg'?"),
    (["fl", "--mode", "qlroa"], "did you mean 'qlora'?"),
    (["fl", "--partition", "subjects"], "did you mean 'subject'?"),
    (["fl", "--head", "shard"], "did you mean 'shared'?"),
    (["fl", "--arm", "centralsed"], "did you mean 'centralised'?"),
    (["lodo", "--data", "uci-har", "--backbones", "other+synthetc", "--out-dir", "x"], "did you mean 'other+synthetic'?"),
    (["lodo", "--data", "uci-har", "--modes", "lora,ful", "--out-dir", "x"], "did you mean 'full'?"),
    (["pretrain", "--data", "hpat"], "did you mean 'hapt'?"),
    (["data", "info", "ucihar"], "did you mean 'uci-har'?"),
    (["data", "prepar", "hapt"], "did you mean 'prepare'?"),
    (["plot", "paretto", "x", "--out-dir", "y"], "did you mean 'pareto'?"),
    (["flx"], "did you mean 'fl'?"),
    (["lodo", "--datasets", "uci-har", "--out-dir", "x"], "did you mean '--data'?"),
])
def test_unknown_names_are_one_line_errors_with_a_suggestion(capsys, argv, suggestion):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("fedhar: error: ") and suggestion in err and "Traceback" not in err


def test_unknown_names_from_python_name_the_closest_one():
    from fedhar.errors import FedharError
    from simulations.config import FLConfig

    with pytest.raises(FedharError, match="unknown dataset 'ucihar' \\(did you mean 'uci-har'\\?\\)"):
        FLConfig(data="ucihar")
    with pytest.raises(FedharError, match="did you mean 'fedex'"):
        FLConfig(strategy="fedx")


def test_strategy_names_match_the_strategies():
    from strategies import STRATEGIES
    from strategies.names import STRATEGY_NAMES

    assert tuple(STRATEGIES) == STRATEGY_NAMES


def test_pretrain_and_lodo_commands_run_end_to_end(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(tmp_path / "cache"))
    tiny = ["--synthetic-domains", "2", "--synthetic-subjects", "3"]
    code, out, err = run(capsys, "pretrain", "--data", "synthetic", "--epochs", "1", *tiny, "--out-dir", str(tmp_path / "bb"))
    assert code == 0, err
    assert out.strip().endswith(".safetensors") and (tmp_path / "bb").exists()
    code, out, err = run(capsys, "lodo", "--data", "synthetic", "--heldout-data", "synthetic-d0", "--backbones", "none",
                         "--modes", "probe", "--epochs", "1", *tiny, "--out-dir", str(tmp_path / "lodo"))
    assert code == 0, err
    assert "synthetic-d0" in out and (tmp_path / "lodo" / "runs.csv").exists()
    code, out, err = run(capsys, "lodo", "--data", "synthetic", "--heldout-data", "uci-har", *tiny,
                         "--out-dir", str(tmp_path / "x"))
    assert code == 2 and "--heldout-data uci-har: not among --data synthetic" in err
