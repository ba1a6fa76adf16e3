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
    client_ranks: str = ""  # per-client LoRA ranks by partition id, e.g. "4,8,16" (cycled); "" = rank
    client_modes: str = ""  # per-client modes by partition id, e.g. "lora,qlora" (cycled); "" = mode
    # federation
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # fedprox only
    server_lr: float = 0.01  # fedadam / fedyogi / fedadagrad: server step (eta)
    rounds: int = 3
    fraction_train: float = 1.0
    min_train_replies: int = 1  # a round with fewer valid replies leaves the global adapters unchanged
    round_timeout: float = 600.0  # seconds to wait for replies; late clients count as timed out
    seed: int = 0
    out_dir: str = ""  # "" = runs/<timestamp>
    resume: bool = False  # continue from out_dir/checkpoint.pkl (the last finished round)
    inject_failure: str = ""  # fault injection for tests: "pid:round[:raise|nan],..." in that client

    def __post_init__(self):
        if self.partition not in PARTITIONS:
            raise FedharError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.mode not in MODES:
            raise FedharError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("rounds", "local_epochs", "batch_size", "rank", "pretrain_epochs"):
            if getattr(self, name) < 1:
                raise FedharError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for mode in [m.strip() for m in self.client_modes.split(",") if m.strip()]:
            if mode not in ("lora", "qlora"):
                raise FedharError(f"client-modes mixes lora and qlora clients, got {mode!r}")
        if not 0 < self.fraction_train <= 1:
            raise FedharError(f"fraction-train must be in (0, 1], got {self.fraction_train}")

    def client_rank(self, pid: int) -> int:
        ranks = [int(r) for r in self.client_ranks.split(",") if r.strip()]
        return ranks[pid % len(ranks)] if ranks else self.rank

    def client_mode(self, pid: int) -> str:
        modes = [m.strip() for m in self.client_modes.split(",") if m.strip()]
        return modes[pid % len(modes)] if modes else self.mode

    @property
    def max_rank(self) -> int:
        ranks = [int(r) for r in self.client_ranks.split(",") if r.strip()]
        return max([self.rank, *ranks])

    def fault(self, pid: int, server_round: int) -> str:
        """The fault injected into client pid in this round: "" (none), "raise" or "nan"."""
        for item in filter(None, (p.strip() for p in self.inject_failure.split(","))):
            parts = item.split(":")
            if parts[:2] == [str(pid), str(server_round)]:
                return parts[2] if len(parts) > 2 else "raise"
        return ""

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
                if isinstance(default, bool) and isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0"):
                        raise ValueError(value)
                    value = value.lower() in ("true", "1")
                values[name] = type(default)(value)
            except (TypeError, ValueError):
                raise FedharError(f"run-config {key}={value!r}: expected {type(default).__name__}") from None
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_run_config(), indent=1, sort_keys=True)
