"""One comparison = one batch: which rows a report may pair by seed.

Replaying a run on another commit, device or thread count moves its numbers by as much as
the effects the reports compare (results/lodo/README.md), so two arms are paired only where
both rows of a seed come from the same batch: the same ``code``, ``device``, ``threads``,
``epochs`` and backbone file (``BATCH_FIELDS``; the field a comparison varies on purpose,
e.g. the backbone in "pretrained - random init", is exempt). A comparison's pairs must also
all come from one batch: when its seeds span several, the batch with the most pairs is kept.
A ``per_seed`` field must agree within each pair but may change from seed to seed: a study
that pretrains a new backbone per seed pairs LoRA and full fine-tuning on each seed's own
backbone, and the pretraining-seed variance enters the interval.
Every pair left out is named, with both rows, in ``Pairing.refused``; a report prints those
lines instead of pairing them. Two rows of one arm with the same seed are an error
(``check_unique``): a report never averages a repeated run into a seed.

Rows are pandas frames with a ``seed`` column, the batch fields they record, and a
``source`` column naming each row for a reader (a CSV file and line, or a run folder).
A field neither arm records is not checked; a field one row records and the other does
not is a mismatch ("unrecorded").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from fedhar.errors import FedharError

BATCH_FIELDS = ("code", "device", "threads", "epochs", "backbone")
UNRECORDED = "unrecorded"


@dataclass
class Pairing:
    """The seeds two arms may be paired on, each arm's metric on them, and the pairs refused."""

    a: pd.Series  # metric by seed, paired seeds only
    b: pd.Series
    refused: list[str] = field(default_factory=list)
    batch: dict = field(default_factory=dict)  # the kept batch's field values

    @property
    def n_refused(self) -> int:
        return len(self.refused)


def _source(row: pd.Series) -> str:
    return str(row["source"]) if "source" in row and pd.notna(row["source"]) else f"row {row.name}"


def _value(row: pd.Series, name: str):
    value = row.get(name, None)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return UNRECORDED
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 1.0 threads (a column with gaps) is 1
    return value


def check_unique(rows: pd.DataFrame, keys: list[str], what: str = "") -> None:
    """Refuse two rows of one configuration (``keys``, the seed among them) with one line
    naming both rows; ``what`` says which table they came from."""
    keys = [k for k in keys if k in rows]
    twice = rows[rows.duplicated(keys, keep=False)]
    if len(twice):
        first = twice.iloc[0]
        same = twice[(twice[keys] == first[keys]).all(axis=1)]
        config = ", ".join(f"{k} {first[k]}" for k in keys)
        raise FedharError(f"{what + ': ' if what else ''}two rows of the same configuration and seed ({config}): "
                          f"{_source(same.iloc[0])} and {_source(same.iloc[1])}; keep one (a re-run is not another seed)")


def pair(a_rows: pd.DataFrame, b_rows: pd.DataFrame, metric: str, *, exempt: tuple[str, ...] = (),
         per_seed: tuple[str, ...] = (), fields: tuple[str, ...] = BATCH_FIELDS, what: str = "") -> Pairing:
    """``metric`` of two arms, paired by seed within one batch; see the module docstring."""
    check_unique(a_rows, ["seed"], what)
    check_unique(b_rows, ["seed"], what)
    checked = [f for f in fields if f not in exempt and (f in a_rows or f in b_rows)]
    shared = [f for f in checked if f not in per_seed]  # the fields every pair of the comparison shares
    a_by, b_by = a_rows.set_index("seed", drop=False), b_rows.set_index("seed", drop=False)
    refused: list[str] = []
    batches: dict[tuple, list] = {}  # the checked fields' values -> the seeds that share them
    for seed in sorted(set(a_by.index) & set(b_by.index)):
        ra, rb = a_by.loc[seed], b_by.loc[seed]
        differ = [(f, _value(ra, f), _value(rb, f)) for f in checked if _value(ra, f) != _value(rb, f)]
        if differ:
            what_differs = ", ".join(f"{f} {va} vs {vb}" for f, va, vb in differ)
            refused.append(f"seed {seed}: {_source(ra)} and {_source(rb)} differ in {what_differs}")
            continue
        key = tuple(_value(ra, f) for f in shared)
        batches.setdefault(key, []).append(seed)
    kept_key = max(batches, key=lambda k: (len(batches[k]), -min(batches[k])), default=None)
    for key, seeds in batches.items():
        if key == kept_key:
            continue
        assert kept_key is not None  # batches is non-empty here, so max() found a key
        other = ", ".join(f"{f} {v}" for f, v, w in zip(shared, key, kept_key) if v != w)
        for seed in seeds:
            refused.append(f"seed {seed}: {_source(a_by.loc[seed])} and {_source(b_by.loc[seed])} are another batch "
                           f"({other}) than the comparison's other seeds {batches[kept_key]}")
    seeds = batches[kept_key] if kept_key is not None else []
    prefix = f"{what}: " if what else ""
    return Pairing(a_by.loc[seeds, metric].astype(float), b_by.loc[seeds, metric].astype(float),
                   [prefix + r for r in refused], dict(zip(shared, kept_key)) if kept_key else {})


def cell(diff, pairing: Pairing) -> str:
    """A report's table cell for one comparison: the difference with its verdict
    (fedhar.stats.PairedDifference.cell), or why it is not there, and how many pairs were refused."""
    if diff.n == 0 and pairing.refused:
        return f"refused: not one batch ({pairing.n_refused} pair{'s' * (pairing.n_refused > 1)}, see below)"
    text = diff.cell()
    if pairing.refused:
        text += f" [{pairing.n_refused} pair{'s' * (pairing.n_refused > 1)} refused: not one batch, see below]"
    return text


def refused_section(refused: list[str]) -> list[str]:
    """Markdown lines listing every refused pair (empty when none was)."""
    if not refused:
        return []
    return ["## Pairs refused: not one batch", "",
            "These seeds' rows differ in code, device, threads, epochs or backbone file (fedhar.pairing), so they "
            "are not paired; re-run both arms of the comparison in one batch to use them.", "",
            *[f"- {r}" for r in refused], ""]


def run_batch(run_dir, meta: dict) -> dict:
    """The batch fields of a ``fedhar fl`` run folder from its config.json (``meta``): code and
    threads as recorded (older runs record no threads, the local arm before this no code),
    the backbone file's name, and epochs as rounds x local epochs; ``source`` the folder."""
    cfg = meta.get("config", {})
    backbone = str(cfg.get("backbone") or "")
    return {"source": str(run_dir), "code": meta.get("code"), "threads": meta.get("threads"),
            "device": meta.get("device"), "backbone": backbone.rsplit("/", 1)[-1] or None,
            "epochs": f"{cfg.get('rounds')} x {cfg.get('local-epochs')}"}
