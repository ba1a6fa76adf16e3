"""Issue 26: the pretraining gain on three real datasets, each held out in turn, in one table.

Reads <held-out>/results.csv (written by results/fl/fedpretrain/run.py, see README.md here) and
writes summary.md: accuracy per (held-out dataset, label fraction, backbone) and other − random
paired by seed within one batch, Holm-corrected over every comparison of the table. The pairing,
statistics and table are run.py's own (fedhar.pairing, fedhar.stats).

    python results/lodo/three_datasets/report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "results" / "fl" / "fedpretrain"))
import run  # noqa: E402  (results/fl/fedpretrain/run.py)


def main() -> int:
    tables = sorted(HERE.glob("*/results.csv"))
    if not tables:
        raise SystemExit(f"report.py: no <held-out>/results.csv under {HERE}")
    rows = pd.concat([pd.read_csv(path).assign(source=lambda r, p=path: [f"{p.parent.name}/results.csv line {i + 2}"
                                                                         for i in range(len(r))])
                      for path in tables], ignore_index=True)
    rows["mode"] = rows["data"] + " held out, probe"  # one group per held-out dataset
    (HERE / "summary.md").write_text(run.table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
