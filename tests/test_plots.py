"""Figures from result tables alone: every kind renders from the fixture tables, says where its
data came from (sidecar JSON with sha256), and bad inputs are one clear FedharError."""

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fedhar.cli import main
from fedhar.errors import FedharError
from simulations.plots import (
    NothingToPlot,
    accuracy_per_client,
    accuracy_vs_bytes,
    drift_vs_round,
    inexactness_scaling,
    lora_vs_qlora,
    plot_all,
    rank_ablation,
)
from simulations.plots.figures import _pareto
from simulations.plots.style import wrap

TABLES = Path(__file__).parent / "fixtures" / "tables"
RUN, SWEEP, SCALING, LODO = TABLES / "run", TABLES / "sweep", TABLES / "sweep_scaling", TABLES / "lodo" / "runs.csv"


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def labelled_lines(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def sidecar(out: Path, name: str) -> dict:
    png = out / f"{name}.png"
    assert png.is_file() and png.stat().st_size > 20_000, "PNG missing or trivial"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    blob = json.loads((out / f"{name}.json").read_text())
    for item in blob["inputs"]:
        assert hashlib.sha256(Path(item["path"]).read_bytes()).hexdigest() == item["sha256"]
    return blob


def inputs(blob: dict) -> set[str]:
    return {Path(i["path"]).relative_to(TABLES).as_posix() for i in blob["inputs"]}


# ---------------------------------------------------------------------------------- figures


def test_drift_from_the_sweep_column(tmp_path):
    fig = drift_vs_round(SWEEP, tmp_path)
    (ax,) = fig.axes
    assert labelled_lines(ax) == ["fedavg (mean of 4 trials)", "fedsa (mean of 4 trials)"]
    assert legend(ax) == labelled_lines(ax)
    assert len(ax.collections) == 2  # a min-max band per strategy
    assert "round" in ax.get_xlabel() and "unitless" in ax.get_ylabel()
    assert fig._suptitle.get_text() == "Client drift per round · synthetic data · n = 8 trials"
    assert "rank ∈ {4, 16}" in ax.get_title(loc="left").replace("\n", " ")  # says what each line averages over
    blob = sidecar(tmp_path, "drift_vs_round")
    assert inputs(blob) == {"sweep/results.csv"} and blob["files"] == ["drift_vs_round.png"]
    assert "fedsa" in blob["message"] and "fedavg" in blob["message"]


def test_drift_from_trial_files_over_seeds(tmp_path):
    fig = drift_vs_round(SCALING, tmp_path, svg=True, where={"local_epochs": "1"})
    (ax,) = fig.axes
    assert labelled_lines(ax) == ["fedavg (mean of 4 trials)", "fedprox (mean of 4 trials)"]
    assert (tmp_path / "drift_vs_round.svg").stat().st_size > 10_000
    blob = sidecar(tmp_path, "drift_vs_round")
    assert blob["files"] == ["drift_vs_round.png", "drift_vs_round.svg"]
    drift_files = {p for p in inputs(blob) if p.endswith("drift.csv")}
    assert len(drift_files) == 8 and "sweep_scaling/results.csv" in inputs(blob)
    assert any("status failed" in n for n in blob["notes"])  # the failed trial is named, not plotted


def test_drift_cosine_of_one_run(tmp_path):
    fig = drift_vs_round(RUN, tmp_path, metric="cosine")
    (ax,) = fig.axes
    assert labelled_lines(ax) == ["fedavg"] and "cosine" in ax.get_ylabel()
    assert inputs(sidecar(tmp_path, "drift_vs_round")) == {"run/rounds.csv", "run/config.json", "run/drift.csv"}


def test_drift_of_a_strategy_without_ba_rows(tmp_path):
    run = _copy(tmp_path, RUN)  # FFA never sends A: its drift.csv has B rows only
    df = pd.read_csv(run / "drift.csv")
    df[df["part"] == "B"].to_csv(run / "drift.csv", index=False)
    with pytest.raises(NothingToPlot, match=r"drift\.csv: no rows with part 'BA' \(it has B; try --part B\)"):
        drift_vs_round(run, tmp_path / "out")
    fig = drift_vs_round(run, tmp_path / "out", part="B")
    assert "(part B)" in fig.axes[0].get_title(loc="left")


def test_inexactness_against_epochs_and_clients(tmp_path):
    fig = inexactness_scaling(SCALING, tmp_path)
    assert len(fig.axes) == 2
    epochs, clients = fig.axes
    assert legend(epochs) == legend(clients) == ["fedavg", "fedprox"]
    assert list(epochs.get_xticks()) == [1, 3] and list(clients.get_xticks()) == [4, 8]
    assert "local epochs" in epochs.get_xlabel() and "clients" in clients.get_xlabel()
    assert "at K = 4 clients" in epochs.get_title(loc="left").replace("\n", " ")
    assert fig._suptitle.get_text() == "Aggregation error of each rule · synthetic data · n = 12 trials"
    blob = sidecar(tmp_path, "inexactness")
    assert "grows with local epochs" in blob["message"]
    assert sum(p.endswith("inexactness.csv") for p in inputs(blob)) == 12


def plotted(ax, label: str) -> list[float]:
    """The y values of the errorbar series with this legend label."""
    (container,) = [c for c in ax.containers if c.get_label() == label]
    return list(container.lines[0].get_ydata())


def test_an_exact_rule_is_plotted_with_zero_aggregation_error(tmp_path):
    """FedEx-LoRA's aggregate is sum_k p_k B_k A_k itself (fedhar/lora_math.py): whatever gap its
    clients' factors have (logged like FedAvg's), its own aggregation error is 0; FedAvg's is the gap."""
    logged = inexactness_scaling(SCALING, tmp_path / "before")
    assert min(plotted(logged.axes[0], "fedprox")) > 0  # these trials' clients have a gap ...
    sweep = _copy(tmp_path, SCALING)
    table = pd.read_csv(sweep / "results.csv")
    table["strategy"] = table["strategy"].replace({"fedprox": "fedex"})  # ... now run under an exact rule
    table.to_csv(sweep / "results.csv", index=False)
    fig = inexactness_scaling(sweep, tmp_path / "out")
    for ax in fig.axes:
        assert plotted(ax, "fedex") == [0.0, 0.0]
        assert min(plotted(ax, "fedavg")) > 0
    blob = sidecar(tmp_path / "out", "inexactness")
    assert any("exact rules, plotted at 0" in n and "fedex" in n for n in blob["notes"])
    assert "fedex: exact, 0 by construction" in fig.axes[0].get_title(loc="left").replace("\n", " ")


def test_inexactness_needs_something_varied():
    with pytest.raises(NothingToPlot, match="neither local epochs nor the clients per round vary"):
        inexactness_scaling(SWEEP, "unused")


def test_accuracy_per_client_with_server_and_heldout(tmp_path):
    fig = accuracy_per_client(RUN, tmp_path)
    (ax,) = fig.axes
    lines = labelled_lines(ax)
    assert lines == ["synthetic-d1", "synthetic-d2", "synthetic-d3", "mean over clients (example-weighted)",
                     "server test subjects (mean of 3 datasets)", "held out: synthetic"]
    assert legend(ax) == lines
    widths = {line.get_label(): line.get_linewidth() for line in ax.get_lines()}
    assert widths["held out: synthetic"] > 2 * widths["synthetic-d1"]
    assert "(%)" in ax.get_ylabel()
    blob = sidecar(tmp_path, "accuracy_per_client")
    assert inputs(blob) == {"run/clients.csv", "run/config.json"}
    assert fig._suptitle.get_text().startswith("Accuracy per client and round · synthetic data · one run")
    assert "synthetic-d3: failed in round 2 (train)" in blob["notes"]


def test_accuracy_per_client_without_optional_columns(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    df = pd.read_csv(RUN / "clients.csv")
    df = df[df["phase"].isin(["train", "evaluate"])].drop(columns=["num_examples", "client"])
    df.to_csv(run / "clients.csv", index=False)
    fig = accuracy_per_client(run, tmp_path / "out", metric="macro_f1")
    assert labelled_lines(fig.axes[0]) == ["0", "1", "2", "mean over clients"]
    notes = " ".join(sidecar(tmp_path / "out", "accuracy_per_client")["notes"])
    assert "no 'client' column" in notes and "unweighted" in notes and "no heldout evaluation" in notes


def test_pareto_front(tmp_path):
    fig = accuracy_vs_bytes(SWEEP, tmp_path)
    (ax,) = fig.axes
    configurations = legend(ax)[:-1]
    assert len(configurations) == 8 and legend(ax)[-1].startswith("Pareto-optimal")
    # no server-side score in this sweep: the clients' accuracy, FedSA's marked as personalised models'
    assert "fedavg / lora / r4" in configurations and "fedsa / qlora / r16 (personalised)" in configurations
    assert "personalised models" in ax.get_title(loc="left").replace("\n", " ")
    # every configuration its own colour and marker; no labels written over the points
    points = [c for c in ax.collections if len(c.get_offsets()) == 1 and c.get_facecolor().size]
    assert len({tuple(c.get_facecolor()[0]) for c in points}) == len({c.get_paths()[0].vertices.tobytes()
                                                                        for c in points}) == 8
    assert not ax.texts
    assert "MB = 10^6 bytes" in ax.get_xlabel() and "(%)" in ax.get_ylabel()
    low, high = ax.get_ylim()
    assert high - low >= 0.1  # no zoom into a fraction of a point
    assert fig._suptitle.get_text().startswith("Final accuracy vs communicated MB · synthetic data · n = 8")
    message = sidecar(tmp_path, "accuracy_vs_bytes")["message"]
    assert message.startswith("2 of 4 configurations are Pareto-optimal") and "fedsa" not in message
    assert inputs(sidecar(tmp_path, "accuracy_vs_bytes")) == {"sweep/results.csv"}


def test_pareto_defaults_to_the_global_models_server_side_score(tmp_path):
    """`fedhar plot pareto` and `plot all` share one score: server_accuracy where the trials have it."""
    sweep = _copy(tmp_path, SWEEP)
    table = pd.read_csv(sweep / "results.csv")
    table["server_accuracy"] = table["accuracy"] - 0.05
    table.to_csv(sweep / "results.csv", index=False)
    for fig in (accuracy_vs_bytes(sweep, tmp_path / "one"), plot_all(sweep, tmp_path / "all")["pareto"]):
        (ax,) = fig.axes
        assert "server-side accuracy" in ax.get_ylabel() and not any("personalised" in t for t in legend(ax))


def test_pareto_log_axis_labels_several_ticks(tmp_path):
    sweep = _copy(tmp_path, SWEEP)
    table = pd.read_csv(sweep / "results.csv")
    big = table["strategy"] == "fedsa"
    table.loc[big, ["bytes_up", "bytes_down"]] *= 40  # a 40x range of MB: a log axis
    table.to_csv(sweep / "results.csv", index=False)
    (ax,) = accuracy_vs_bytes(sweep, tmp_path / "out").axes
    assert ax.get_xscale() == "log"
    low, high = ax.get_xlim()
    assert len([t for t in ax.get_xticks() if low <= t <= high]) >= 3


def test_pareto_indices():
    # (cost, gain): the cheapest, then each strictly better one; ties in cost keep the better
    assert _pareto([1, 2, 2, 3, 4], [0.5, 0.7, 0.6, 0.65, 0.8]) == [0, 1, 4]


def test_rank_ablation_from_a_sweep_and_from_lodo_never_on_one_axis(tmp_path):
    fig = rank_ablation(SWEEP, tmp_path / "fed")
    acc, f1 = fig.axes
    assert legend(acc) == ["federated: fedavg / lora", "federated: fedavg / qlora", "federated: fedsa / lora",
                           "federated: fedsa / qlora"]
    assert fig._suptitle.get_text().startswith("Accuracy vs LoRA rank · federated · synthetic data")
    assert "macro-F1" in f1.get_ylabel() and "rank" in acc.get_xlabel()
    fig = rank_ablation(LODO, tmp_path / "lodo")
    acc, _ = fig.axes
    assert legend(acc) == ["full fine-tuning (LODO uci-har)", "LODO uci-har: lora", "LODO uci-har: qlora"]
    assert [t.get_text() for t in acc.get_xticklabels()] == ["8", "16", "32", "64"]
    assert "real data: UCI-HAR" in fig._suptitle.get_text()
    blob = sidecar(tmp_path / "lodo", "rank_ablation")
    assert inputs(blob) == {"lodo/runs.csv"}
    assert any("train_fraction 0.7" in n for n in blob["notes"])
    with pytest.raises(NothingToPlot, match="not both"):
        rank_ablation([SWEEP, LODO], tmp_path)


def test_rank_ablation_needs_two_ranks():
    with pytest.raises(NothingToPlot, match="two or more LoRA ranks"):
        rank_ablation(SCALING, "unused")


def test_lora_vs_qlora(tmp_path):
    fig = lora_vs_qlora([SWEEP, LODO], tmp_path)
    (lodo,) = fig.axes  # frozen-weight bytes only: a sweep's process RSS is not the weights' memory
    # LoRA only at the rank QLoRA ran too: like with like
    assert legend(lodo) == ["LoRA (fp32 backbone), n=2", "QLoRA (4-bit NF4 backbone), n=2"]
    assert "frozen" in lodo.get_xlabel() and "MB = 10^6 bytes" in lodo.get_xlabel()
    assert fig._suptitle.get_text().startswith("LoRA vs QLoRA")
    blob = sidecar(tmp_path, "lora_vs_qlora")
    assert blob["message"].startswith("QLoRA needs") and "frozen weights" in blob["message"]
    assert inputs(blob) == {"lodo/runs.csv"}
    assert any("process RSS" in n for n in blob["notes"])


def test_lora_vs_qlora_needs_lodo_runs_of_both_modes():
    with pytest.raises(NothingToPlot, match="frozen weights' bytes"):
        lora_vs_qlora(SWEEP, "unused")


def test_all_makes_what_the_inputs_allow(tmp_path):
    results = plot_all([SWEEP, LODO], tmp_path)
    made = {k for k, v in results.items() if not isinstance(v, Exception)}
    assert made == {"drift", "pareto", "memory"}
    assert all(isinstance(results[k], NothingToPlot) for k in ("inexactness", "clients", "rank"))
    assert {p.name for p in tmp_path.iterdir()} == {f"{n}.{s}" for n in ("drift_vs_round", "accuracy_vs_bytes",
                                                                         "lora_vs_qlora")
                                                   for s in ("png", "json")}
    results = plot_all(RUN, tmp_path / "run")
    assert {k for k, v in results.items() if not isinstance(v, Exception)} == {"drift", "clients"}


# ------------------------------------------------------------------------------- bad inputs


def _copy(tmp_path, src: Path) -> Path:
    dst = tmp_path / src.name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def _drop(path: Path, column: str) -> None:
    pd.read_csv(path).drop(columns=[column]).to_csv(path, index=False)


@pytest.mark.parametrize("func, fixture, table, column", [
    (accuracy_per_client, RUN, "clients.csv", "phase"),
    (accuracy_per_client, RUN, "clients.csv", "accuracy"),
    (drift_vs_round, RUN, "drift.csv", "part"),
    (drift_vs_round, SWEEP, "results.csv", "drift_mean"),  # and no trials/<id>/drift.csv beside it
    (inexactness_scaling, SWEEP, "results.csv", "inexactness_mean"),
    (drift_vs_round, SWEEP, "results.csv", "strategy"),
    (inexactness_scaling, SCALING, "results.csv", "trial_id"),
    (accuracy_vs_bytes, SWEEP, "results.csv", "bytes_up"),
    (rank_ablation, SWEEP, "results.csv", "rank"),
    (lora_vs_qlora, LODO, "runs.csv", "frozen_bytes"),
    (rank_ablation, LODO, "runs.csv", "accuracy"),
])
def test_missing_column_names_file_and_column(tmp_path, func, fixture, table, column):
    copy = _copy(tmp_path, fixture)
    path = copy / table if copy.is_dir() else copy
    _drop(path, column)
    with pytest.raises(FedharError) as err:
        func(copy, tmp_path / "out")
    assert str(path) in str(err.value) and repr(column) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_all_skips_what_a_sweep_did_not_record(capsys, tmp_path):
    sweep = _copy(tmp_path, SWEEP)
    _drop(sweep / "results.csv", "drift_mean")
    code, out, err = run_cli(capsys, "plot", "all", sweep, "--out-dir", tmp_path / "out")
    assert code == 0 and "accuracy_vs_bytes.png" in out and "drift_vs_round" not in out
    assert f"skipped drift: {sweep / 'results.csv'}: missing column 'drift_mean'" in err


def test_missing_config_key_names_the_file(tmp_path):
    run = _copy(tmp_path, RUN)
    blob = json.loads((run / "config.json").read_text())
    del blob["config"]["strategy"]
    (run / "config.json").write_text(json.dumps(blob))
    with pytest.raises(FedharError, match=r"config\.json: missing key 'config\.strategy'"):
        drift_vs_round(run, tmp_path / "out")


def test_bad_number_names_file_column_and_line(tmp_path):
    run = _copy(tmp_path, RUN)
    lines = (run / "rounds.csv").read_text().splitlines()
    cells = lines[2].split(",")
    cells[5] = "0.7o"  # accuracy of round 2
    lines[2] = ",".join(cells)
    (run / "rounds.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FedharError, match=r"rounds\.csv:3: column 'accuracy': '0\.7o' is not a number"):
        drift_vs_round(run, tmp_path / "out")


def test_not_a_table(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(FedharError, match="not a table fedhar plots"):
        drift_vs_round(tmp_path / "notes.txt", tmp_path / "out")
    with pytest.raises(FedharError, match="no such file or directory"):
        drift_vs_round(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.csv").write_text("")
    with pytest.raises(FedharError, match="empty file"):
        drift_vs_round(tmp_path / "empty", tmp_path / "out")


def test_mathtext_is_never_wrapped_apart():
    text = wrap("a long caption " * 4 + r"$\Vert\sum_k p_k B_k A_k\Vert_F$ and more words after it", 30)
    assert r"$\Vert\sum_k p_k B_k A_k\Vert_F$" in text.replace("\n", "\0")


# --------------------------------------------------------------------------------------- CLI


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_help(capsys):
    assert main(["plot", "--help"]) == 0
    out = capsys.readouterr().out
    assert "fedhar plot" in out
    assert all(kind in out for kind in ("drift", "inexactness", "clients", "pareto", "rank", "memory", "all"))
    assert main(["plot", "drift", "--help"]) == 0 and "--where" in capsys.readouterr().out
    code, _, err = run_cli(capsys, "plot")
    assert code == 2 and "KIND" in err


def test_cli_draws_and_reports(capsys, tmp_path):
    code, out, err = run_cli(capsys, "plot", "clients", RUN, "--out-dir", tmp_path, "--svg", "--name", "fig")
    assert code == 0 and (tmp_path / "fig.png").is_file() and (tmp_path / "fig.svg").is_file()
    assert out.startswith(f"{tmp_path / 'fig.png'}: After round 3") and "note: synthetic-d3: failed" in err
    code, out, err = run_cli(capsys, "plot", "pareto", SWEEP, "--out-dir", tmp_path, "--where", "mode=lora")
    assert code == 0 and "of 2 configurations" in out and "personalised left out" in out


def test_cli_all(capsys, tmp_path):
    code, out, err = run_cli(capsys, "plot", "all", SCALING, "--out-dir", tmp_path)
    assert code == 0 and "drift_vs_round.png" in out and "inexactness.png" in out
    assert "skipped rank: " in err and "skipped memory: " in err


def test_cli_bad_input_is_one_line(capsys, tmp_path):
    sweep = _copy(tmp_path, SWEEP)
    _drop(sweep / "results.csv", "bytes_down")
    code, _, err = run_cli(capsys, "plot", "pareto", sweep, "--out-dir", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"fedhar: error: {sweep / 'results.csv'}: missing required column 'bytes_down'")
    code, _, err = run_cli(capsys, "plot", "rank", SCALING, "--out-dir", tmp_path / "out", "--where", "nope=1")
    assert code == 2 and "no column 'nope'" in err
