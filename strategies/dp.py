"""User-level central differential privacy: DP-FedAvg (McMahan et al., ICLR 2018).

Each round, for the replies the rule accepts, the server
  1. takes each client's update u_k = (what it sent) - (the global the server sent it),
     over everything the client sends (adapters, shared head, its BatchNorm statistics),
     and scales it to L2 norm at most ``clip`` (one norm over all those tensors);
  2. averages with equal weights and a fixed denominator, the expected number of clients
     m = fraction-train x clients: global + (sum_k clip(u_k)) / m, so one client moves the
     result by at most clip / m, whatever the others do and however many arrive;
  3. adds Gaussian noise of std ``noise_multiplier * clip / m`` to every tensor that travelled.
The noise multiplier is given (--dp-noise-multiplier) or calibrated so that ``rounds``
releases, each client sampled with probability q = fraction-train, spend --dp-epsilon at
--dp-delta (fedhar.privacy: dp-accounting's RDP accountant); each round's spent epsilon goes
to clients.csv (an "aggregate" row) and rounds.csv.

Adaptive clipping (--dp-adaptive-clip; Andrew et al., NeurIPS 2021): the clip norm follows
the median update norm, C <- C exp(-0.2 (b - 0.5)), where b is the noised fraction of
clients whose update was not clipped (count noise std m/20, Flower's default); the update
noise is raised so that both releases together cost what one with the calibrated noise
multiplier costs (z_update = (z^-2 - (2 sigma_count)^-2)^-1/2, their Theorem 1).

Which rules: those whose new global is, tensor by tensor, the mean of what the clients send
(``Rule.central_dp`` says what it protects: FedAvg/FedIT, FFA-LoRA, FedSA-LoRA, FedProx), so
that clipping the updates bounds the mean. FedEx's residual, FLoRA's stacking, HetLoRA's
and FlexLoRA's SVDs and the server optimisers' state (FedAdam, ...) are not means of what
was clipped: refused with one line.

Why not Flower's DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping wrappers: they wrap
a Strategy from outside, so (a) they pair the reply's arrays with the global's by position,
which breaks when the rule sends less than the global holds (FedSA without B in round 1)
or sends extra tensors; (b) their noise, clip / num_sampled_clients, is only the sensitivity
of an unweighted mean, while fedhar's rules weight by examples (Flower's own accounted mode
refuses such strategies); (c) a wrapper hides the rule's hooks the round loop calls
(``downlink``, ``observe_global``, the ``min_*_nodes`` it lowers) and nests the strategy in
the checkpoint; (d) their accountant is Flower-internal (flwr.supercore) and supports no
client sampling. Here DP is a subclass of the rule's own server class (``private``), so the
rule's validation and aggregation run unchanged on the clipped replies, on every engine
(inline, ray, flwr run, deployment).

What the guarantee covers: the sequence of global models the server releases (and all it
computes from them: server evaluation, the saved model). Not covered: what the clients send
in the clear besides their tensors (num-examples, train loss, accuracy, in clients.csv) and
the server's own per-client diagnostics (drift.csv): the server is trusted (central DP).
The noise is drawn from the operating system's entropy, never from --seed: a seeded noise
could be subtracted by anyone who reads config.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common import log

from fedhar.errors import FedharError
from fedhar.privacy import check_budget, epsilon_spent, noise_multiplier_for

TARGET_UNCLIPPED = 0.5  # adaptive clipping follows the median update norm (Andrew et al.)
CLIP_LR = 0.2  # their geometric step
COUNT_STD_SHARE = 1 / 20  # noise on the unclipped count: m/20 (their recommendation, Flower's default)


@dataclass(frozen=True)
class DPSettings:
    """One run's central-DP mechanism (``settings_for``)."""

    noise_multiplier: float  # z of the whole release (updates and, adaptive, the count)
    clip: float  # the clip norm (the first one, when adaptive)
    expected_clients: int  # m, the fixed denominator
    sampling_rate: float  # q
    delta: float
    adaptive: bool = False
    target_epsilon: float = 0.0  # what z was calibrated for (0: z given)

    @property
    def count_std(self) -> float:
        return self.expected_clients * COUNT_STD_SHARE if self.adaptive else 0.0

    @property
    def update_noise_multiplier(self) -> float:
        """The updates' own z: z itself, or (adaptive) raised to pay for the count's release."""
        if not self.adaptive:
            return self.noise_multiplier
        return (self.noise_multiplier ** -2 - (2 * self.count_std) ** -2) ** -0.5

    def noise_std(self, clip: float) -> float:
        return self.update_noise_multiplier * clip / self.expected_clients

    def epsilon(self, releases: int) -> float:
        return epsilon_spent(self.noise_multiplier, self.sampling_rate, releases, self.delta)

    def describe(self, rounds: int) -> dict:
        """For config.json: the mechanism and what the whole run spends."""
        return {"guarantee": "user-level (a client's whole data), central (trusted server), add-or-remove-one",
                "noise_multiplier": self.noise_multiplier, "update_noise_multiplier": self.update_noise_multiplier,
                "clip": self.clip, "adaptive_clip": self.adaptive, "expected_clients": self.expected_clients,
                "sampling_rate": self.sampling_rate, "delta": self.delta, "target_epsilon": self.target_epsilon or None,
                "epsilon_after_all_rounds": self.epsilon(rounds), "accountant": "dp-accounting RDP, Poisson sampling"}


def wants_central_dp(cfg) -> bool:
    return cfg.dp_epsilon > 0 or cfg.dp_noise_multiplier > 0


def settings_for(cfg, n_clients: int) -> DPSettings | None:
    """The mechanism for this run (None without --dp-epsilon / --dp-noise-multiplier); a
    FedharError naming the option for settings that promise nothing."""
    if not wants_central_dp(cfg):
        return None
    check_rule(cfg.strategy)
    if cfg.arm != "federated":
        raise FedharError(f"--dp-epsilon / --dp-noise-multiplier protect what a federation releases: not for --arm {cfg.arm}")
    m = max(1, int(round(cfg.fraction_train * n_clients)))
    q = m / n_clients
    if cfg.dp_epsilon > 0:
        check_budget(cfg.dp_epsilon, cfg.dp_delta, n_clients, "clients")
        z = noise_multiplier_for(cfg.dp_epsilon, cfg.dp_delta, q, cfg.rounds)
    else:
        check_budget(math.inf, cfg.dp_delta, n_clients, "clients")
        z = cfg.dp_noise_multiplier
    settings = DPSettings(z, cfg.dp_clip, m, q, cfg.dp_delta, cfg.dp_adaptive_clip, cfg.dp_epsilon)
    if settings.adaptive and z >= 2 * settings.count_std:
        raise FedharError(f"--dp-adaptive-clip: the noise multiplier {z:.3g} needs more than {z / (2 * COUNT_STD_SHARE):.1f} "
                          f"clients per round (count noise std m/20 must exceed z/2), this run has {m}: "
                          f"use a fixed --dp-clip")
    return settings


def privacy_summary(cfg, dp: DPSettings | None) -> dict:
    """config.json's "privacy": each mechanism on, what it spends and what it protects."""
    from strategies.registry import get_rule

    central = None
    if dp is not None:
        central = {**dp.describe(cfg.rounds), "protects": get_rule(cfg.strategy).central_dp,
                   "not_protected": "metrics sent in the clear (num-examples, loss, accuracy); local heads and "
                                    "local B never leave their clients"}
    local = None
    if cfg.dp_sgd_noise > 0:
        local = {"guarantee": "record-level (one window of a client), per client, over the rounds it trained",
                 "noise_multiplier": cfg.dp_sgd_noise, "clip": cfg.dp_sgd_clip, "delta": cfg.dp_delta,
                 "epsilon": "per client and round in clients.csv (dp_sgd_epsilon); the largest in rounds.csv"}
    return {"central_dp": central, "dp_sgd": local}


def check_rule(name: str) -> None:
    from strategies.registry import get_rule, rule_names

    if not get_rule(name).averages_replies:
        ok = [n for n in rule_names() if get_rule(n).averages_replies]
        raise FedharError(f"--strategy {name} does not average what the clients send, so clipping cannot bound its "
                          f"result: central DP needs one of {', '.join(ok)}")


def clip_update(update: dict[str, np.ndarray], clip: float) -> tuple[dict[str, np.ndarray], float]:
    """``update`` scaled to L2 norm (over all its tensors together) at most ``clip``; its norm before."""
    norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in update.items()}, norm


def private(strategy_cls: type) -> type:
    """A subclass of a rule's server class that runs DP-FedAvg (module docstring);
    constructed with ``dp=DPSettings`` besides the class's own keywords."""

    class Private(strategy_cls):
        def __init__(self, *args, dp: DPSettings, **kwargs):
            super().__init__(*args, **kwargs)
            self.dp = dp
            self.dp_clip = dp.clip  # moves when adaptive
            self.dp_releases = 0
            self.dp_reference: dict[str, np.ndarray] = {}
            self.dp_rng = np.random.default_rng()  # OS entropy, never --seed (module docstring)

        def configure_train(self, server_round, arrays, config, grid):
            self.dp_reference = {k: v.numpy() for k, v in arrays.items()}
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies):
            replies = list(replies)
            clipped, norms = [], {}
            for msg in replies:
                if msg.has_error():
                    clipped.append(msg)
                    continue
                msg, norms[msg.metadata.src_node_id] = self._clipped(msg)
                clipped.append(msg)
            arrays, metrics = super().aggregate_train(server_round, clipped)
            if arrays is None:
                return arrays, metrics
            rejected = getattr(self, "last_rejected", {})
            accepted = [m for m in clipped if not m.has_error() and m.metadata.src_node_id not in rejected]
            arrays = self._release(arrays, accepted)
            unclipped = [norms[m.metadata.src_node_id] <= self.dp_clip for m in accepted]
            row = {"round": server_round, "phase": "aggregate", "status": "ok",
                   "dp_noise_std": self.dp.noise_std(self.dp_clip), "dp_clip": self.dp_clip,
                   "dp_clipped": 1 - float(np.mean(unclipped)) if unclipped else float("nan")}
            if self.dp.adaptive:  # after this round's release: the next round's clip
                noisy = (sum(unclipped) + self.dp_rng.normal(0.0, self.dp.count_std)) / self.dp.expected_clients
                self.dp_clip *= math.exp(-CLIP_LR * (noisy - TARGET_UNCLIPPED))
            self.dp_releases += 1
            row.update(dp_epsilon=self.dp.epsilon(self.dp_releases), dp_delta=self.dp.delta)
            log(INFO, "round %d: DP release %d: noise std %.4g, clip %.4g, epsilon %.4g at delta %g", server_round,
                self.dp_releases, row["dp_noise_std"], row["dp_clip"], row["dp_epsilon"], self.dp.delta)
            if getattr(self, "log", None) is not None:  # strategies.recording's RoundLog
                self.log.add(row)
            metrics = metrics if metrics is not None else MetricRecord({})
            metrics["dp-epsilon"] = row["dp_epsilon"]
            return arrays, metrics

        def _clipped(self, msg: Message) -> tuple[Message, float]:
            """A copy of the reply holding global + clip(update), weight 1; its update's norm.
            Tensors the server did not send (or of another shape) have no update to clip and are
            left out; integer tensors (BatchNorm's batch counter) keep the global's value."""
            key = getattr(self, "arrayrecord_key", "arrays")
            records = msg.content.array_records
            if key not in records:
                return msg, 0.0  # the rule's validation rejects it
            try:
                sent = {k: v.numpy() for k, v in records[key].items()}
            except Exception:  # noqa: BLE001  undecodable: the rule's validation rejects it
                return msg, 0.0
            ref = self.dp_reference
            usable = {k: v for k, v in sent.items() if k in ref and np.shape(v) == np.shape(ref[k])}
            floats = {k: v for k, v in usable.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}
            update, norm = clip_update({k: v.astype(np.float64) - ref[k] for k, v in floats.items()}, self.dp_clip)
            state = {k: ref[k] for k in usable} | {k: (ref[k] + update[k]).astype(floats[k].dtype) for k in floats}
            content = RecordDict({key: ArrayRecord({k: Array(np.array(v, order="C")) for k, v in state.items()})})
            weight_key = getattr(self, "weighted_by_key", "num-examples")
            for name, record in msg.content.metric_records.items():
                content[name] = MetricRecord({**dict(record.items()), weight_key: 1})  # equal weights
            for name, record in msg.content.config_records.items():
                content[name] = record
            return Message(content=content, metadata=msg.metadata), norm

        def _release(self, arrays: ArrayRecord, accepted: list[Message]) -> ArrayRecord:
            """The rule's mean of k accepted replies -> global + sum/m + noise, per tensor that travelled."""
            key = getattr(self, "arrayrecord_key", "arrays")
            counts: dict[str, int] = {}
            for msg in accepted:
                for name in msg.content.array_records[key].keys():
                    counts[name] = counts.get(name, 0) + 1
            std = self.dp.noise_std(self.dp_clip)
            out = dict(arrays.items())
            for name, k in counts.items():
                if name not in arrays or not np.issubdtype(arrays[name].numpy().dtype, np.floating):
                    continue
                mean, ref = arrays[name].numpy(), self.dp_reference[name]
                value = ref + (k / self.dp.expected_clients) * (mean.astype(np.float64) - ref)
                value = value + self.dp_rng.normal(0.0, std, size=value.shape)
                if name.endswith("running_var"):  # post-processing: a variance is never negative
                    value = np.maximum(value, 0.0)
                out[name] = Array(np.array(value, dtype=mean.dtype, order="C"))
            return ArrayRecord(out)

    Private.__name__ = Private.__qualname__ = f"Private{strategy_cls.__name__}"
    return Private
