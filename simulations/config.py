"""Every knob of a federated run, in one place.

The same keys are the Flower run config (``[tool.flwr.app.config]`` in pyproject.toml,
``flwr run . --run-config "rounds=5 rank=16"``) and the options of ``fedhar fl``.
Defaults are the embedded default: a short federated LoRA run on synthetic data, one
client per synthetic domain, a backbone pretrained on a separate synthetic population.

Evaluation knobs (server side: simulations/server_eval.py):
  server_test_fraction  > 0: per dataset of the federation, the server holds out the very
                        test subjects the centralised LODO baseline tests on (fedhar.lodo,
                        train fraction 1 - server_test_fraction, same seed); the clients
                        are formed from the remaining (training) subjects only, and the
                        server evaluates the global model on the held-out subjects.
  server_val_fraction   > 0 (with server_test_fraction > 0): a tuning run. The test subjects
                        above leave the run entirely; per dataset, this share of the
                        remaining (training) subjects (``server_test_mask`` again, same
                        seed) becomes the server's validation subjects, held by no client;
                        the server_* columns are then validation scores. ``fedhar sweep``
                        selects hyperparameters on them, then re-runs with 0 (test subjects).
  normalise             "dataset": z-normalise with the statistics of each dataset's
                        training windows (all clients' training splits of that dataset);
                        "client": each client with its own training statistics.
  head                  "shared": the head is averaged like the adapters; "local": it never
                        leaves its client and is sized to that client's labels; "auto":
                        local when some client's training labels miss a class of the
                        federation's label space, else shared.
  heldout_data          datasets no client holds (or "synthetic": a separately seeded draw),
                        on which the server evaluates the global adapters every round.

Arms of the like-for-like comparison (``arm``); everything but federation is held equal:
  federated    the clients train and the server aggregates (the strategy)
  centralised  one client holding the union of every client's training windows (exactly
               those windows, same normalisation, optimiser, schedule, dropout, rounds x
               local epochs of passes, same server test windows): the upper bound
  local        every client trains alone on its own windows for the same passes and is
               never aggregated (simulations/local_only.py): the lower bound
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from fedhar.errors import FedharError
from fedhar.options import MAX_RANK, check_name, split_names
from strategies.names import STRATEGY_NAMES  # noqa: F401 (the built-in names, for callers)

PARTITIONS = ("dataset", "subject", "dirichlet")
MODES = ("full", "lora", "qlora")
NORMALISE = ("dataset", "client")
HEADS = ("auto", "shared", "local")
ARMS = ("federated", "centralised", "local")
FAULTS = ("raise", "nan")
#: FLConfig fields that say where a run reads and writes, not what it computes: a run's
#: reproducing command and a figure's setting labels leave them out
WHERE_FIELDS = ("out_dir", "resume", "overwrite", "data_dir", "backbone", "tensorboard")


def _flag(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class FLConfig:
    # data
    data: str = "synthetic"  # a dataset name, or several comma-separated
    data_dir: str = ""  # "" = the usual search path (fedhar data list)
    readers: str = ""  # datasets from outside fedhar: module:Class | module:function | module, comma-separated
    partition: str = "dataset"  # one client per dataset | per subject | Dirichlet label skew
    num_clients: int = 8  # only for partition = dirichlet
    dirichlet_alpha: float = 0.5
    test_fraction: float = 0.3  # each client's own test split (subject-disjoint, or time order per subject)
    server_test_fraction: float = 0.0  # > 0: the server holds these test subjects per dataset (LODO's split)
    server_val_fraction: float = 0.0  # > 0: tuning: the test subjects leave; the server evaluates on validation subjects
    normalise: str = "dataset"  # z-statistics per dataset (clients' training windows) | per client
    synthetic_domains: int = 3
    synthetic_subjects: int = 6
    # backbone
    pretrain_data: str = "synthetic"  # "synthetic" = a separate synthetic population, or datasets, comma-separated
    pretrain_epochs: int = 5
    backbone: str = ""  # path of an MAE checkpoint; "" = pretrain (cached) on pretrain_data
    # fine-tuning
    mode: str = "lora"
    rank: int = 8
    lora_alpha: float = 16.0
    fused_lora: bool = False  # LoRA layers as one fused addmm (fedhar.model.fused_lora): faster, equal to peft within rounding
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 2e-3
    client_ranks: str = ""  # per-client LoRA ranks by partition id, e.g. "4,8,16" (cycled); "" = rank
    client_modes: str = ""  # per-client modes by partition id, e.g. "lora,qlora" (cycled); "" = mode
    head: str = "auto"  # shared (averaged) | local (stays on its client) | auto: local if label sets differ
    # federation
    arm: str = "federated"  # federated | centralised (one client, the union of the clients' training windows) | local
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # fedprox only
    server_lr: float = 0.01  # fedadam / fedyogi / fedadagrad: server step (eta)
    server_momentum: float = 0.9  # fedavgm, with server lr 1 - momentum (Flower's default momentum 0 = FedAvg)
    rounds: int = 3
    fraction_train: float = 1.0
    min_train_replies: int = 1  # a round with fewer valid replies leaves the global adapters unchanged
    round_timeout: float = 600.0  # seconds to wait for replies; late clients count as timed out
    seed: int = 0
    # server-side evaluation (simulations/server_eval.py)
    heldout_data: str = ""  # comma-separated datasets that no client holds; "synthetic" = a separate draw
    probe_epochs: int = 5  # head-only probe on held-out data (head local, or labels outside the space)
    server_eval_every: int = 1  # evaluate on the server every this many rounds (and the last round)
    out_dir: str = ""  # "" = runs/<timestamp>
    resume: bool = False  # continue from out_dir/checkpoint.pkl (the last finished round)
    tensorboard: str = ""  # a folder: per-round metrics and the config to TensorBoard (simulations/tracking.py)
    overwrite: bool = False  # replace an earlier run's tables in out_dir (else that is an error)
    inject_failure: str = ""  # fault injection for tests: "pid:round[:raise|nan],..." in that client

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Every option checked before any work starts; errors name the option (--flag)."""
        from fedhar.data.registry import dataset_names, load_readers

        load_readers(self.readers)  # first: they add dataset names (every process that reads this config)

        for name, known in (("partition", PARTITIONS), ("mode", MODES), ("normalise", NORMALISE),
                            ("head", HEADS), ("arm", ARMS)):
            check_name(name, getattr(self, name), known)
        from strategies.registry import get_rule  # imports the rule: a module:Class one must exist

        rule = get_rule(self.strategy)
        for flag, names in (("data", self.datasets), ("heldout-data", self.heldout_datasets),
                            ("pretrain-data", self.pretrain_datasets)):
            for name in names:
                try:
                    check_name("dataset", name, dataset_names())
                except FedharError as e:
                    raise FedharError(f"--{flag}: {e}") from None
        for name in ("rounds", "local_epochs", "batch_size", "rank", "pretrain_epochs", "probe_epochs",
                     "server_eval_every", "num_clients", "min_train_replies", "synthetic_domains",
                     "synthetic_subjects"):
            if getattr(self, name) < 1:
                raise FedharError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise FedharError(f"--seed must be >= 0, got {self.seed}")
        for f in fields(self):  # nan/inf never make sense as a setting
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise FedharError(f"--{_flag(f.name)} must be a finite number, got {value}")
        for name in ("lr", "lora_alpha", "dirichlet_alpha", "server_lr", "round_timeout"):
            if getattr(self, name) <= 0:
                raise FedharError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        if self.proximal_mu < 0:
            raise FedharError(f"--proximal-mu must be >= 0, got {self.proximal_mu}")
        if not 0 <= self.server_momentum < 1:
            raise FedharError(f"--server-momentum must be in [0, 1), got {self.server_momentum}")
        if not 0 < self.test_fraction < 1:
            raise FedharError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        for rank in [self.rank, *self.rank_list]:
            if not 1 <= rank <= MAX_RANK:
                raise FedharError(f"--{'client-ranks' if rank != self.rank else 'rank'}: a LoRA rank must be in "
                                  f"1..{MAX_RANK} (the backbone's width), got {rank}")
        if self.client_ranks and not rule.heterogeneous_ranks:
            from strategies.registry import heterogeneous_rank_names

            raise FedharError(f"--client-ranks needs a strategy that aggregates different ranks: "
                              f"{', '.join(heterogeneous_rank_names())} (got {self.strategy})")
        for mode in self.mode_list:
            if mode not in ("lora", "qlora"):
                raise FedharError(f"--client-modes mixes lora and qlora clients, got {mode!r}")
        if not 0 < self.fraction_train <= 1:
            raise FedharError(f"--fraction-train must be in (0, 1], got {self.fraction_train}")
        if not 0 <= self.server_test_fraction < 1:
            raise FedharError(f"--server-test-fraction must be in [0, 1) (0 = no server test split), "
                              f"got {self.server_test_fraction}")
        if not 0 <= self.server_val_fraction < 1:
            raise FedharError(f"--server-val-fraction must be in [0, 1) (0 = evaluate on the test subjects), "
                              f"got {self.server_val_fraction}")
        if self.server_val_fraction and not self.server_test_fraction:
            raise FedharError("--server-val-fraction needs --server-test-fraction > 0: validation subjects are "
                              "drawn from the subjects left once the test subjects are out")
        if self.resume and self.overwrite:
            raise FedharError("--resume continues the run in --out-dir, --overwrite replaces it: not both")
        _ = self.faults  # parses --inject-failure
        self._check_datasets()
        self._check_heldout()

    def check_clients(self, n_clients: int) -> None:
        """What needs the number of clients (known once the data is partitioned)."""
        for flag, values in (("client-ranks", self.rank_list), ("client-modes", self.mode_list)):
            if len(values) > n_clients:
                raise FedharError(f"--{flag} gives {len(values)} values for {n_clients} clients")
        for pid, _ in self.faults:
            if pid >= n_clients:
                raise FedharError(f"--inject-failure names client {pid}, but the run has {n_clients} clients "
                                  f"(0..{n_clients - 1})")

    def _check_datasets(self) -> None:
        """Known names; the backbone never pretrained on the clients' data or their people."""
        from fedhar.data.registry import SYNTHETIC, get_reader

        pretrain = self.pretrain_datasets
        for flag, names in (("data", self.datasets), ("pretrain-data", pretrain), ("heldout-data", self.heldout_datasets)):
            if not names and flag != "heldout-data":
                raise FedharError(f"--{flag} names no dataset")
            for name in names:
                if name != SYNTHETIC:
                    try:
                        get_reader(name)
                    except KeyError as e:
                        raise FedharError(f"--{flag}: {e.args[0]}") from None
        if self.backbone:
            return  # a given backbone: what it was pretrained on is not ours to check
        shared = sorted(set(pretrain) & set(self.datasets) - {SYNTHETIC})
        if shared:
            raise FedharError(f"--pretrain-data and --data share {shared}: the backbone would see test data")
        from fedhar.data.registry import SAME_PEOPLE  # hapt and uci-har: the same 30 volunteers

        for group in SAME_PEOPLE:
            if group & set(pretrain) and group & set(self.datasets):
                raise FedharError(f"--pretrain-data {sorted(group & set(pretrain))} was recorded from the same "
                                  f"people as --data {sorted(group & set(self.datasets))}")

    def _check_heldout(self) -> None:
        """Held-out datasets must be unseen: by the clients, by the backbone, and by anyone
        recorded from the same people. "synthetic" is always a separately seeded draw."""
        held = self.heldout_datasets
        if len(set(held)) != len(held):
            raise FedharError(f"heldout-data names a dataset twice: {self.heldout_data!r}")
        pretrain = self.pretrain_datasets
        for other, what in ((self.datasets, "data"), (pretrain, "pretrain-data")):
            shared = sorted(set(held) & set(other) - {"synthetic"})
            if shared:
                raise FedharError(f"heldout-data and {what} share {shared}: held-out data must be unseen")
        if held:
            from fedhar.data.registry import SAME_PEOPLE  # hapt and uci-har: the same 30 volunteers

            for group in SAME_PEOPLE:
                if group & set(held) and group & (set(self.datasets) | set(pretrain)):
                    raise FedharError(f"heldout-data {sorted(group & set(held))} was recorded from the same "
                                      f"people as {sorted(group & (set(self.datasets) | set(pretrain)))}")

    @property
    def rank_list(self) -> list[int]:
        """--client-ranks as integers (cycled over the clients by partition id)."""
        ranks = []
        for item in (r.strip() for r in self.client_ranks.split(",") if r.strip()):
            try:
                ranks.append(int(item))
            except ValueError:
                raise FedharError(f"--client-ranks: {item!r} is not an integer "
                                  f"(expected ranks by partition id, e.g. 4,8,16)") from None
        return ranks

    @property
    def mode_list(self) -> list[str]:
        return [m.strip() for m in self.client_modes.split(",") if m.strip()]

    def client_rank(self, pid: int) -> int:
        ranks = self.rank_list
        return ranks[pid % len(ranks)] if ranks else self.rank

    def client_mode(self, pid: int) -> str:
        modes = self.mode_list
        return modes[pid % len(modes)] if modes else self.mode

    @property
    def max_rank(self) -> int:
        return max([self.rank, *self.rank_list])

    @property
    def faults(self) -> dict[tuple[int, int], str]:
        """--inject-failure parsed: (partition id, round) -> "raise" | "nan"."""
        out = {}
        for item in filter(None, (p.strip() for p in self.inject_failure.split(","))):
            parts = item.split(":")
            kind = parts[2] if len(parts) > 2 else "raise"
            if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]) or kind not in FAULTS:
                raise FedharError(f"--inject-failure: {item!r} is not pid:round[:raise|nan] "
                                  f"(e.g. 0:2 or 1:3:nan)")
            pid, server_round = int(parts[0]), int(parts[1])
            if not 1 <= server_round <= self.rounds:
                raise FedharError(f"--inject-failure: {item!r} names round {server_round}, but the run has "
                                  f"rounds 1..{self.rounds}")
            out[(pid, server_round)] = kind
        return out

    def fault(self, pid: int, server_round: int) -> str:
        """The fault injected into client pid in this round: "" (none), "raise" or "nan"."""
        return self.faults.get((pid, server_round), "")

    @property
    def datasets(self) -> list[str]:
        return split_names(self.data)

    @property
    def heldout_datasets(self) -> list[str]:
        return split_names(self.heldout_data)

    @property
    def pretrain_datasets(self) -> list[str]:
        return split_names(self.pretrain_data)

    @property
    def heldout_test_fraction(self) -> float:
        """The held-out datasets' test share: server_test_fraction, else LODO's 30%."""
        return self.server_test_fraction or 0.3

    def server_evaluates(self, server_round: int) -> bool:
        """Whether the server evaluates after this round (every server_eval_every, and the last)."""
        return server_round % self.server_eval_every == 0 or server_round == self.rounds

    def to_run_config(self) -> dict:
        """Flat hyphenated keys, as Flower's run config has them."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, run_config: dict) -> FLConfig:
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
