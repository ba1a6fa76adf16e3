"""How far the committed reference federations (tests/fixtures/reference_runs/) move when re-run
on this machine: the largest absolute and relative deviation per table column, over the 9 cases.
The tolerances in tests/reference_runs.py come from these numbers.

    python benchmarks/bench_reference_drift.py OUT.csv [CASE ...]

Vary the kernels and the summation order with the environment, e.g. OMP_NUM_THREADS=1 or 2,
ATEN_CPU_CAPABILITY=default (torch's portable kernels instead of AVX2/AVX-512)."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import reference_runs as rr  # noqa: E402


def deviations(case: str, got: dict[str, pd.DataFrame]) -> list[dict]:
    rows = []
    for name, table in got.items():
        expected = pd.read_csv(rr.REFERENCE_DIR / case / f"{name}.csv")
        table = pd.read_csv(pd.io.common.StringIO(table.to_csv(index=False)))
        for col in expected.columns:
            a, b = table[col], expected[col]
            if a.dtype.kind != "f" and b.dtype.kind != "f":
                rows.append(dict(case=case, table=name, column=col, abs=float(not a.equals(b)), rel=np.nan))
                continue
            a, b = a.astype(float).to_numpy(), b.astype(float).to_numpy()
            both = ~(np.isnan(a) & np.isnan(b))
            d = np.abs(a[both] - b[both])
            rel = d / np.maximum(np.abs(b[both]), 1e-300)
            rows.append(dict(case=case, table=name, column=col, abs=float(d.max(initial=0)), rel=float(rel.max(initial=0))))
    return rows


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(out: str, cases: list[str]) -> None:
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rr.fill_cache(Path(tmp) / "cache")
        for case in cases or list(rr.CASES):
            rows += deviations(case, rr.run_case(case, Path(tmp) / case))
    env = dict(cpu=cpu_model(), torch_threads=torch.get_num_threads(),
               aten_cpu_capability=os.environ.get("ATEN_CPU_CAPABILITY", "(auto)"),
               torch_capability=torch.backends.cpu.get_cpu_capability())
    pd.DataFrame(rows).assign(**env).to_csv(out, index=False)
    print(pd.DataFrame(rows).groupby(["table", "column"])[["abs", "rel"]].max().to_string())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
