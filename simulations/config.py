"""Every knob of a federated run, in one place.

The same keys are the Flower run config (``[tool.flwr.app.config]`` in pyproject.toml,
``flwr run . --run-config "rounds=5 rank=16"``) and the options of ``fedhar fl``.
Defaults are the embedded default: a short federated LoRA run on synthetic data, one
client per synthetic domain, a backbone pretrained on a separate synthetic population.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from fedhar.errors import FedharError

PARTITIONS = ("dataset", "subject", "dirichlet")
MODES = ("full", "lora", "qlora")


@dataclass(frozen=True)
class FLConfig:
    # data
    data: str = "synthetic"  # a dataset name, or several joined by "+"
    data_dir: str = ""  # "" = the usual search path (fedhar data list)
    partition: str = "dataset"  # one client per dataset | per subject | Dirichlet label skew
    num_clients: int = 8  # only for partition = dirichlet
    dirichlet_alpha: float = 0.5
    test_fraction: float = 0.3  # subject-disjoint, within each client
    synthetic_domains: int = 3
    synthetic_subjects: int = 6
    # backbone
    pretrain_data: str = "synthetic"  # "synthetic" = a separate synthetic population, or datasets joined by "+"
    pretrain_epochs: int = 5
    backbone: str = ""  # path of an MAE checkpoint; "" = pretrain (cached) on pretrain_data
    # fine-tuning
    mode: str = "lora"
    rank: int = 8
    lora_alpha: float = 16.0
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 2e-3
    # federation
    strategy: str = "fedavg"
    rounds: int = 3
    fraction_train: float = 1.0
    seed: int = 0
    out_dir: str = ""  # "" = runs/<timestamp>

    def __post_init__(self):
        if self.partition not in PARTITIONS:
            raise FedharError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.mode not in MODES:
            raise FedharError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("rounds", "local_epochs", "batch_size", "rank", "pretrain_epochs"):
            if getattr(self, name) < 1:
                raise FedharError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.fraction_train <= 1:
            raise FedharError(f"fraction-train must be in (0, 1], got {self.fraction_train}")

    @property
    def datasets(self) -> list[str]:
        return [d for d in self.data.split("+") if d]

    def to_run_config(self) -> dict:
        """Flat hyphenated keys, as Flower's run config has them."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, run_config: dict) -> "FLConfig":
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise FedharError(f"unknown run-config key {key!r}; known: {', '.join(sorted(cls().to_run_config()))}")
            default = known[name].default
            try:
                values[name] = type(default)(value)
            except (TypeError, ValueError):
                raise FedharError(f"run-config {key}={value!r}: expected {type(default).__name__}") from None
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_run_config(), indent=1, sort_keys=True)
