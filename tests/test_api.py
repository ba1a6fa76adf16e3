"""fedhar from a plain Python script (no __main__ guard): DataFrames back, files written."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fedhar
from fedhar.errors import FedharError

SCRIPT = """
import fedhar
from simulations import federate

run = federate(synthetic_subjects=3, pretrain_epochs=1, rounds=1, batch_size=32, out_dir={fl!r})
assert list(run.rounds["round"]) == [1] and 0 <= run.rounds["accuracy"].iloc[0] <= 1
assert set(run.clients["phase"]) >= {{"train", "evaluate"}} and run.config["config"]["rounds"] == 1
print("evaluate", fedhar.evaluate(run.model_dir, data="synthetic")["accuracy"])
table = fedhar.run_lodo(data="synthetic", heldout_data="synthetic-d0", modes="lora", ranks=(4,), epochs=1,
                        pretrain_epochs=1, synthetic_domains=3, synthetic_subjects=3, out_dir={lodo!r})
print("lodo", len(table), table["mode"].iloc[0])
"""


@pytest.mark.slow
def test_a_script_without_main_guard_federates_and_runs_lodo(tmp_path):
    script = tmp_path / "study.py"
    script.write_text(textwrap.dedent(SCRIPT.format(fl=str(tmp_path / "fl"), lodo=str(tmp_path / "lodo"))))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "evaluate 0." in done.stdout and "lodo 1 lora" in done.stdout
    assert "round 1/1  acc " in done.stdout  # the live per-round line
    assert (tmp_path / "fl" / "model" / "adapter_model.safetensors").exists()


def test_unknown_options_name_the_closest():
    from simulations import federate

    with pytest.raises(FedharError, match="simulations.federate: unknown option 'round' \\(did you mean 'rounds'\\?\\)"):
        federate(round=3)
    with pytest.raises(FedharError, match="fedhar.run_lodo: unknown option .*did you mean 'epochs'"):
        fedhar.run_lodo(data="synthetic", out_dir="x", epoch=3)
