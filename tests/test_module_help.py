"""Every module a user runs with ``python -m`` answers --help (exit 0, a usage line) and does
nothing else: the report modules, and every ``python -m X`` that README.md or a results README
names (issue 21)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ["fedhar.lodo_report", "fedhar.arms_report", "simulations.two_datasets_report", "simulations.fl_report",
           "simulations.fair_rules_report", "simulations.sweep_confirm"]
NOT_OURS = {"pytest", "pip", "venv"}


def named_modules() -> list[str]:
    """REPORTS and each ``python -m X`` named in README.md and results/**/README.md."""
    found = set(REPORTS)
    for readme in [ROOT / "README.md", *sorted((ROOT / "results").glob("**/README.md"))]:
        found |= set(re.findall(r"python -m ([A-Za-z_][\w.]*)", readme.read_text()))
    return sorted(found - NOT_OURS)


@pytest.mark.slow  # about 12 CPU-seconds: ten interpreters importing torch, Flower, Ray
def test_every_module_run_with_python_m_answers_help():
    modules = named_modules()
    assert set(REPORTS) <= set(modules) and "simulations.flwr_launch" in modules
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for m in modules}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"python -m {module} --help: exit {proc.returncode}: {err.strip()[-300:]}"
        assert out.startswith("usage: "), f"python -m {module} --help printed no usage: {out[:200]!r}"
