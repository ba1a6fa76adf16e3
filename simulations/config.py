"""Every knob of a federated run, in one place.

The same keys are the Flower run config (``[tool.flwr.app.config]`` in pyproject.toml,
``flwr run . --run-config "num-server-rounds=5 rank=16"``) and the options of ``fedhar fl``,
except where Flower has its own name for a knob (``option(key=...)``: the run-config key
``num-server-rounds`` is ``fedhar fl --rounds``).
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
from dataclasses import asdict, dataclass, field, fields

from fedhar.errors import FedharError
from fedhar.options import (
    MAX_RANK,
    READERS_HELP,
    SYNTHETIC_DOMAINS,
    SYNTHETIC_SEED,
    SYNTHETIC_SUBJECTS,
    check_device,
    check_name,
    split_names,
)
from strategies.names import STRATEGY_NAMES  # noqa: F401 (the built-in names, for callers)

PARTITIONS = ("dataset", "subject", "dirichlet")
MODES = ("full", "lora", "qlora")
NORMALISE = ("dataset", "client")
HEADS = ("auto", "shared", "local")
ARMS = ("federated", "centralised", "local")
FAULTS = ("raise", "nan")
TASKS = ("finetune", "pretrain")
#: FLConfig fields that say where a run reads and writes, not what it computes: a run's
#: reproducing command and a figure's setting labels leave them out
WHERE_FIELDS = ("out_dir", "resume", "overwrite", "data_dir", "backbone", "tensorboard")


def option(default, help: str, key: str = "", parse: str = ""):
    """A field of FLConfig with its help text: the one place of an option's default and help
    (``fedhar fl --help``, ``fedhar deploy``, sweeps; pyproject.toml's section is checked
    against the defaults by tests/test_flwr_app.py). ``key``: its run-config key where Flower
    has its own name for the knob (its app templates' ``num-server-rounds``); the field's own
    name stays accepted in a run config (run_config.toml files of earlier runs). ``parse="positive"``: an
    option whose default 0 means off, which the command line refuses as 0 (``--dp-epsilon 0`` promises
    nothing; leave the option out)."""
    return field(default=default, metadata={"help": help, "key": key, "parse": parse})


def _flag(name: str) -> str:
    return name.replace("_", "-")


def run_config_key(f) -> str:
    """A field's key in Flower's run config (Flower's own name where it has one)."""
    return f.metadata.get("key") or _flag(f.name)


@dataclass(frozen=True)
class FLConfig:
    # data
    data: str = option("synthetic", "datasets the clients hold, comma-separated")
    data_dir: str = option("", "folder holding the datasets (default: the search path of `fedhar data list`)")
    readers: str = option("", READERS_HELP)
    partition: str = option("dataset",
        "clients: one per dataset, one per subject, or Dirichlet label skew (--num-clients)")
    num_clients: int = option(8, "clients of a Dirichlet partition")
    dirichlet_alpha: float = option(0.5, "Dirichlet concentration: smaller = more label skew")
    test_fraction: float = option(0.3,
        "each client's own test share (subject-disjoint for partition=dataset, else the last windows in time order)")
    server_test_fraction: float = option(0.0,
        "> 0: per dataset, the server holds out the test subjects of the centralised LODO baseline (same seed, "
        "train fraction 1 - this) and evaluates the global model on them; clients get the remaining subjects only "
        "(0 = off)")
    server_val_fraction: float = option(0.0,
        "> 0 (with --server-test-fraction): a tuning run: the test subjects leave the run and the server evaluates "
        "on this share of the remaining subjects (validation subjects no client holds)")
    normalise: str = option("dataset",
        "z-normalisation statistics: each dataset's training windows over all clients, or each client's own")
    synthetic_domains: int = option(SYNTHETIC_DOMAINS, "synthetic data: domains (each like a dataset, its own sampling rate)")
    synthetic_subjects: int = option(SYNTHETIC_SUBJECTS, "synthetic data: subjects per domain")
    synthetic_seed: int = option(SYNTHETIC_SEED,
        "synthetic data: generator seed (the clients' population is drawn with this + --seed, so each --seed is its "
        "own draw)")
    # backbone
    pretrain_data: str = option("synthetic",
        "what the backbone is pretrained on: 'synthetic' (a separate population) or datasets, comma-separated")
    pretrain_epochs: int = option(5, "MAE pretraining epochs of the backbone (cached by data and settings)")
    backbone: str = option("", "an MAE checkpoint to use instead of pretraining (--task pretrain: the one to start from)")
    # federated pretraining and few labels (issue 22; simulations/fed_pretrain.py, fedhar/data/few_labels.py)
    task: str = option("finetune",
        "finetune: adapters on a frozen backbone; pretrain: federated MAE pretraining of the backbone itself "
        "(encoder + decoder) on the clients' unlabelled training windows, written to OUT_DIR/backbone.safetensors "
        "(starts from --backbone, else a random init seeded with --seed)")
    label_fraction: float = option(1.0,
        "share of each client's training windows that are labelled: per subject and activity one seeded, "
        "time-contiguous block of ceil(F * n) windows; the rest train nothing here (they serve pretraining)")
    labelled_clients: int = option(0,
        "only this many clients (a seeded choice) have labels and fine-tune; the others only pretrain (0 = all)")
    # fine-tuning
    mode: str = option("lora", "what clients train: full fine-tuning, LoRA, or LoRA on 4-bit NF4 frozen weights")
    rank: int = option(8, "LoRA rank r")
    lora_alpha: float = option(16.0, "LoRA scaling alpha (the update is alpha/r * B A)")
    fused_lora: bool = option(False,
        "compute each LoRA layer as one fused addmm (faster; equal to peft's within float rounding, not bit for "
        "bit)")
    local_epochs: int = option(1, "epochs each client trains per round")
    threads: int = option(1, "torch threads of each client (0: torch's own choice); on the ray and flwr engines "
                          "every client is a process of its own")
    device: str = option("cpu", "where the clients train and evaluate: cpu or cuda[:N] (the server's evaluation "
                         "stays on the CPU)")
    batch_size: int = option(64, "training batch size on each client")
    lr: float = option(2e-3, "client learning rate (AdamW)")
    client_ranks: str = option("",
        "per-client LoRA ranks by partition id, e.g. 4,8,16 (rules that aggregate different ranks: flora, hetlora, "
        "flexlora, or a rule of your own)")
    client_modes: str = option("", "per-client modes by partition id, e.g. lora,qlora")
    head: str = option("auto",
        "shared (averaged), local (never leaves its client, sized to its labels) or auto (local when some client's "
        "training labels miss a class of the federation)")
    # federation
    arm: str = option("federated",
        "federated; centralised (one client with the union of the clients' training windows, all else equal: the "
        "upper bound); local (each client alone, never aggregated: the lower bound)")
    strategy: str = option("fedavg", "aggregation rule, by name or as module:Class (the rules: fedhar fl --help)")
    proximal_mu: float = option(0.01, "fedprox: weight of the proximal term")
    server_lr: float = option(0.01, "fedadam, fedyogi, fedadagrad: the server step eta")
    server_momentum: float = option(0.9, "fedavgm: server momentum (Flower's default 0 would make it FedAvg)")
    rounds: int = option(3, "federated rounds", key="num-server-rounds")
    fraction_train: float = option(1.0, "share of the clients sampled to train each round")
    min_train_replies: int = option(1, "a round with fewer replies leaves the global adapters unchanged")
    round_timeout: float = option(600.0, "seconds to wait for a round's replies; late clients count as timed out")
    seed: int = option(0, "seed of partitions, splits, client sampling and initialisation")
    # server-side evaluation (simulations/server_eval.py)
    heldout_data: str = option("",
        "datasets no client holds, comma-separated ('synthetic' = a separately seeded draw): the server evaluates "
        "the global adapters on their LODO test subjects every round")
    probe_epochs: int = option(5,
        "epochs of the head-only probe (frozen global encoder) used for held-out data when the head is local or its"
        " labels leave the federation's space")
    server_eval_every: int = option(1, "server-side evaluation every N rounds (and always after the last)")
    client_eval_every: int = option(1, "every client evaluates the global model every N rounds (and always after "
                                    "the last); with thousands of clients, evaluation is most of a round")
    out_dir: str = option("", "where the run's tables, checkpoint and model go (default: runs/<time>)")
    resume: bool = option(False, "continue a crashed or stopped run from OUT_DIR/checkpoint.pkl")
    tensorboard: str = option("",
        "log per-round metrics and the run's configuration to TensorBoard under this folder (needs `pip install "
        "'fedhar[tracking]'`; view with `tensorboard --logdir DIR`)")
    overwrite: bool = option(False,
        "replace the earlier run in OUT_DIR (without it, an OUT_DIR holding a run is an error)")
    inject_failure: str = option("", "fault injection for tests: pid:round[:raise|nan],...")
    # differential privacy (README "Privacy"): user-level central DP, strategies/dp.py; record-level DP-SGD,
    # fedhar/model/dp_sgd.py; accounting, fedhar/privacy.py
    dp_epsilon: float = option(0.0,
        "user-level central DP (DP-FedAvg): the epsilon all rounds together may spend at --dp-delta; the noise is "
        "calibrated to it (the default 0: no DP)", parse="positive")
    dp_delta: float = option(1e-5, "delta of the DP guarantees (central and DP-SGD); must be below 1/clients")
    dp_noise_multiplier: float = option(0.0,
        "central DP with this noise multiplier instead of one calibrated from --dp-epsilon (the epsilon spent is "
        "reported)", parse="positive")
    dp_clip: float = option(1.0, "central DP: L2 norm bound of each client's update, over all it sends (the first "
                            "bound, with --dp-adaptive-clip)")
    dp_adaptive_clip: bool = option(False, "central DP: the bound follows the median update norm (Andrew et al. 2021)")
    dp_sgd_noise: float = option(0.0,
        "record-level DP-SGD on every client (lora, full): noise multiplier of each step (the default 0: off)",
        parse="positive")
    dp_sgd_clip: float = option(1.0, "DP-SGD: L2 norm bound of each window's gradient")
    # secure aggregation (README "Privacy"; simulations/secure_aggregation.py)
    secagg: bool = option(False,
        "secure aggregation with Flower's SecAgg+: the server unmasks only the example-weighted mean of the clients' "
        "updates, never one client's (rules that average what clients send: fedavg/fedit, ffa, fedsa, fedprox; not "
        "with central DP; the clients' metrics still travel in the clear)")
    secagg_clip: float = option(8.0,
        "SecAgg+: each coordinate of a client's update (what it sends minus what it received) must lie in [-C, C], "
        "which is quantised to 2^22 levels (a client with a larger update fails its round with a message)")
    secagg_threshold: float = option(0.5,
        "SecAgg+: share of a round's clients whose key shares unmask the sum; the others may drop out after "
        "sharing keys (higher: fewer dropouts tolerated, more clients needed to collude)")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Every option checked before any work starts; errors name the option (--flag)."""
        from fedhar.data.registry import check_dataset, load_readers

        load_readers(self.readers)  # first: they add dataset names (every process that reads this config)

        for name, known in (("partition", PARTITIONS), ("mode", MODES), ("normalise", NORMALISE),
                            ("head", HEADS), ("arm", ARMS)):
            check_name(name, getattr(self, name), known)
        from strategies.registry import get_rule  # imports the rule: a module:Class one must exist

        rule = get_rule(self.strategy)
        for flag, names in (("data", self.datasets), ("heldout-data", self.heldout_datasets),
                            ("pretrain-data", self.pretrain_datasets)):
            for name in names:
                check_dataset(name, flag)
        for name in ("rounds", "local_epochs", "batch_size", "rank", "pretrain_epochs", "probe_epochs",
                     "server_eval_every", "client_eval_every", "num_clients", "min_train_replies", "synthetic_domains",
                     "synthetic_subjects"):
            if getattr(self, name) < 1:
                raise FedharError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "synthetic_seed"):  # numpy's and torch's generators take them whole
            if not 0 <= getattr(self, name) < 2**32:
                raise FedharError(f"--{_flag(name)} must be in 0..{2**32 - 1}, got {getattr(self, name)}")
        if self.threads < 0:
            raise FedharError(f"--threads must be >= 0, got {self.threads}")
        check_device(self.device)
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
        self._check_privacy()
        self._check_datasets()
        self._check_heldout()
        self._check_task(rule)

    def _check_task(self, rule) -> None:
        """--task, --label-fraction, --labelled-clients (issue 22)."""
        check_name("task", self.task, TASKS)
        if not 0 < self.label_fraction <= 1:
            raise FedharError(f"--label-fraction must be in (0, 1], got {self.label_fraction}")
        if self.labelled_clients < 0:
            raise FedharError(f"--labelled-clients must be >= 0 (0 = all), got {self.labelled_clients}")
        if self.task != "pretrain":
            return
        if self.label_fraction != 1 or self.labelled_clients:
            raise FedharError("--label-fraction and --labelled-clients choose who fine-tunes: --task pretrain "
                              "uses every training window of every client, labelled or not")
        if not rule.any_model:
            raise FedharError(f"--task pretrain: --strategy {self.strategy} aggregates LoRA adapters only; use one "
                              f"that averages any tensors (fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad)")
        if self.arm == "local":
            raise FedharError("--task pretrain --arm local: nothing would be aggregated (use federated or centralised)")
        if self.heldout_data:
            raise FedharError("--heldout-data: --task pretrain evaluates reconstruction on the clients' test windows only")

    def clients_per_round(self, n_clients: int) -> int:
        """How many clients are sampled to train each round."""
        return max(1, int(round(self.fraction_train * n_clients)))

    def check_clients(self, n_clients: int) -> None:
        """What needs the number of clients (known once the data is partitioned)."""
        if self.labelled_clients > n_clients:
            raise FedharError(f"--labelled-clients {self.labelled_clients}: the run has {n_clients} clients")
        from strategies.dp import settings_for

        settings_for(self, n_clients)  # central DP: delta < 1/clients, a noise multiplier that reaches epsilon
        for flag, values in (("client-ranks", self.rank_list), ("client-modes", self.mode_list)):
            if len(values) > n_clients:
                raise FedharError(f"--{flag} gives {len(values)} values for {n_clients} clients")
        per_round = self.clients_per_round(n_clients)
        if self.secagg and not 2 <= per_round <= 1023:  # SecAgg+ sums >= 2 inputs; 1023 x 2^22 < 2^32, no wrap-around
            raise FedharError(f"--secagg: SecAgg+ needs 2..1023 clients per round, got {per_round} "
                              f"(--fraction-train {self.fraction_train} of {n_clients} clients)")
        if self.min_train_replies > per_round:  # every round would aggregate nothing
            raise FedharError(f"--min-train-replies {self.min_train_replies}: only {per_round} of {n_clients} clients "
                              f"train each round (--fraction-train {self.fraction_train})")
        for pid, _ in self.faults:
            if pid >= n_clients:
                raise FedharError(f"--inject-failure names client {pid}, but the run has {n_clients} clients "
                                  f"(0..{n_clients - 1})")

    def _check_privacy(self) -> None:
        for name in ("dp_epsilon", "dp_noise_multiplier", "dp_sgd_noise"):
            if getattr(self, name) < 0:
                raise FedharError(f"--{_flag(name)} must be > 0 (0 = off), got {getattr(self, name)}")
        if self.dp_epsilon > 0 and self.dp_noise_multiplier > 0:
            raise FedharError("--dp-epsilon calibrates the noise multiplier, --dp-noise-multiplier gives it: not both")
        for name in ("dp_clip", "dp_sgd_clip"):
            if getattr(self, name) <= 0:
                raise FedharError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        if not 0 < self.dp_delta < 1:
            raise FedharError(f"--dp-delta must be in (0, 1) (and below 1/clients), got {self.dp_delta}")
        if self.dp_sgd_noise > 0 and self.strategy == "fedprox":
            raise FedharError("--dp-sgd-noise clips each window's gradient; FedProx's proximal term is not one: "
                              "not both (use --strategy fedavg)")
        self._check_secure_aggregation()
        if self.dp_sgd_noise > 0 and "qlora" in (self.mode, *self.mode_list):
            raise FedharError("--dp-sgd-noise: per-example gradients through 4-bit layers are not supported: "
                              "use --mode lora or full")

    def _check_secure_aggregation(self) -> None:
        if self.secagg_clip <= 0:
            raise FedharError(f"--secagg-clip must be > 0, got {self.secagg_clip}")
        if not 0 < self.secagg_threshold <= 1:
            raise FedharError(f"--secagg-threshold must be in (0, 1], got {self.secagg_threshold}")
        if not self.secagg:
            return
        from strategies.registry import get_rule, rule_names

        if not get_rule(self.strategy).averages_replies:
            ok = [n for n in rule_names() if get_rule(n).averages_replies]
            raise FedharError(f"--secagg: --strategy {self.strategy} is not the weighted mean of what the clients send, "
                              f"the one thing secure aggregation reveals: use one of {', '.join(ok)}")
        if self.dp_epsilon > 0 or self.dp_noise_multiplier > 0:
            raise FedharError("--secagg with central DP (--dp-epsilon / --dp-noise-multiplier): the server clips each "
                              "client's update, which secure aggregation withholds: not both")
        if self.task != "finetune" or self.arm != "federated":
            raise FedharError("--secagg: secure aggregation is for federated fine-tuning (--task finetune, "
                              "--arm federated)")

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
        if self.backbone or self.task == "pretrain":
            return  # a given backbone: what it was pretrained on is not ours to check; pretrain: none
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

    def clients_evaluate(self, server_round: int) -> bool:
        """Whether the clients evaluate the new global model in this round (every
        client_eval_every, and the last)."""
        return server_round % self.client_eval_every == 0 or server_round == self.rounds

    def to_run_config(self) -> dict:
        """Flower's run config: flat hyphenated keys, Flower's names where it has one (option's key)."""
        return {run_config_key(f): getattr(self, f.name) for f in fields(self)}

    def settings(self) -> dict:
        """The fields under the names of ``fedhar fl``'s options (``rounds``, ``local-epochs``):
        what config.json, checkpoints and the reports built on them record."""
        return {_flag(k): v for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, run_config: dict) -> FLConfig:
        """From a run config (or settings(): each field's own name is accepted too)."""
        known = {f.name: f for f in fields(cls)}
        field_of = {run_config_key(f): f.name for f in fields(cls)} | {_flag(f.name): f.name for f in fields(cls)}
        values = {}
        for key, value in run_config.items():
            name = field_of.get(key, "")
            if name not in known:
                raise FedharError(f"unknown run-config key {key!r}; known: {', '.join(sorted(cls().to_run_config()))}")
            if name in values:
                raise FedharError(f"run-config key {key!r} repeats {run_config_key(known[name])!r} (its other name)")
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
        return json.dumps(self.settings(), indent=1, sort_keys=True)
