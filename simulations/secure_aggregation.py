"""Secure aggregation with Flower's SecAgg+ (``--secagg``): the server unmasks only the
example-weighted mean of the clients' updates, never one client's.

Flower 1.41/1.42 offers SecAgg+ (Bell et al., CCS 2020) for its legacy strategy API only: the
server's ``flwr.server.workflow.SecAggPlusWorkflow`` runs in a ``LegacyContext`` and asks a
legacy ``Strategy`` for ``configure_fit`` / ``aggregate_fit``; the client's
``flwr.client.mod.secaggplus_mod`` reads the reply as legacy ``fitres.*`` records. fedhar's
rules are Message-API strategies driven by fedhar's round loop (simulations/rounds.py), so
this module is the glue, and all cryptography (key agreement, Shamir shares of the mask
seeds, quantisation, masking, unmasking with the shares of dropped clients) is Flower's:

  server  ``SecureAggregation.train`` runs one train phase as Flower's workflow
          (``_Workflow``: SecAggPlusWorkflow, whose setup stage is followed by putting
          fedhar's own train messages, the rule's ``configure_train``, where the workflow
          would put legacy FitIns). A legacy ``Strategy`` shim (``_Shim``) names the
          sampled nodes and receives the unmasked mean. Every send_and_receive goes
          through the round loop's ``exchange`` (timeout, Ctrl-C, replies attributed to
          their node). ``SecureAggregation.aggregate`` then hands the rule one reply, the
          mean (weight 1): a rule whose new global is the weighted mean of the replies
          (``Rule.averages_replies``: fedavg/fedit, ffa, fedsa, fedprox) returns the same
          global from it, after its own checks (shapes, finite values) on the mean.
  client  ``secure_mod`` (a mod of the ClientApp's train function) passes a SecAgg+
          message to Flower's ``secaggplus_mod``, and inside it ``legacy_reply`` turns
          fedhar's reply into the legacy record Flower masks: the update (what the client
          sends minus what it received, float64) of every floating-point tensor the server
          sent, in the order sent, weighted by ``num-examples``. The client refuses, with
          one line, an update that is not finite (a masked NaN would become an arbitrary
          number of the sum), outside ``[-secagg-clip, secagg-clip]`` (Flower would clip it
          silently), a weight above the server's bound, or tensors the server did not send.

What the server still sees: who took part and who dropped out, each client's metrics
(``num-examples``, loss, accuracy: in clients.csv, as without SecAgg+), the shapes of the
masked vectors (a reply of the wrong shapes is dropped before summing), and the unmasked
mean. Integer tensors (BatchNorm's batch counter) do not travel and keep the global's
value, as under central DP. Quantisation (Flower's): each client's weighted update is
stochastically rounded to ``QUANTIZATION_RANGE`` levels over ``[-clip, clip]``, so each
coordinate of the mean is within ``tolerance()`` of the exact weighted mean (with Flower's
default clip 8 and equal weights, 5.7e-6 for any number of clients), and, as the rounding
draws from numpy's global generator, runs with --secagg are not bit-reproducible.

Three Flower modules used here are not in its API reference, because SecAgg+ speaks the
legacy records: ``flwr.compat.common.recorddict_compat`` (the ``fitres.*`` layout),
``flwr.common.secure_aggregation.secaggplus_constants`` (the protocol's record keys) and
``flwr.server.workflow.constant`` (where the workflow reads the round). tests/
test_flower_public_api.py allows them in this file only; tests/test_secure_aggregation.py
runs the whole protocol, so a Flower release that changes them fails there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from logging import INFO, WARNING

import flwr.compat.common.recorddict_compat as legacy_records
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.client import mod as flower_mods
from flwr.common import Code, FitIns, FitRes, Parameters, Status, bytes_to_ndarray, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common import log as flwr_log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import LegacyContext, ServerConfig, SimpleClientManager, workflow
from flwr.server import strategy as legacy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from fedhar.errors import FedharError
from simulations.messages import SUPERLINK_NODE_ID, ErrorCode, with_metadata
from simulations.rounds import exchange
from strategies.recording import reply_rows
from strategies.records import is_delta_key

QUANTIZATION_RANGE = 2**22  # Flower's defaults: 22-bit quantisation in a 32-bit modulus
MODULUS_RANGE = 2**32
MAX_CLIENTS = MODULUS_RANGE // QUANTIZATION_RANGE - 1  # the sum of this many quantised vectors cannot wrap
WEIGHT_KEY = "num-examples"
MAX_WEIGHT_KEY = "secagg-max-weight"  # in the train message's config: the weight bound of this run
CLIP_KEY = "secagg-clip"
BYTES_SENT_KEY = "bytes-sent"  # the client's uplink in clients.csv (simulations/client_app.py)


def travelling_keys(arrays: ArrayRecord) -> list[str]:
    """The tensors SecAgg+ sums: the floating-point ones the server sent, in the order sent."""
    return [k for k, v in arrays.items() if not is_delta_key(k) and np.issubdtype(np.dtype(v.dtype), np.floating)]


def tolerance(clip: float, weights: list[float], max_weight: float) -> float:
    """Largest difference per coordinate between SecAgg+'s mean and the exact weighted mean
    of n updates within ``[-clip, clip]``: each client's ``r_k * update`` (r_k = w_k /
    max_weight) is stochastically rounded to a step of ``2 clip / QUANTIZATION_RANGE`` (error
    < one step), r_k itself to ``1 / QUANTIZATION_RANGE`` (error <= half of one, on an update
    of at most clip), and the sum divided by ``sum_k r_k``: n * 3 clip / (Q * sum_k r_k)."""
    return len(weights) * 3 * clip / (QUANTIZATION_RANGE * sum(weights) / max_weight)


def describe_secure_aggregation(cfg) -> dict | None:
    """config.json's ``privacy.secure_aggregation``: what SecAgg+ hides and what it does not."""
    if not cfg.secagg:
        return None
    return {"protocol": "SecAgg+ (Flower's SecAggPlusWorkflow and secaggplus_mod)",
            "server_sees": "the example-weighted mean of the clients' updates, who took part and who dropped out, "
                           "each client's metrics (num-examples, loss, accuracy), the shapes of the masked vectors",
            "server_never_sees": "one client's tensors",
            "clip": cfg.secagg_clip, "quantization_levels": QUANTIZATION_RANGE, "threshold": cfg.secagg_threshold}


# ---- client ---------------------------------------------------------------------------

def secure_mod(msg: Message, context: Context, call_next) -> Message:
    """The train function's mod: a SecAgg+ message goes through Flower's ``secaggplus_mod``
    (which calls the train function in its collect-masked-vectors stage, through
    ``legacy_reply``); any other message passes unchanged."""
    if not is_secure(msg):
        return call_next(msg, context)
    return flower_mods.secaggplus_mod(msg, context, lambda m, c: legacy_reply(m, c, call_next))


def is_secure(msg: Message) -> bool:
    """Whether ``msg`` is a message of the SecAgg+ protocol."""
    return msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records


def legacy_reply(msg: Message, context: Context, call_next) -> Message:
    """The train function's reply as the legacy record SecAgg+ masks (``fitres.*``: the
    update of every tensor in ``travelling_keys``, weight ``num-examples``), fedhar's
    MetricRecord kept beside it (the server's per-client rows)."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    config = msg.content["config"]
    sent = msg.content["arrays"]
    metrics = reply.content["metrics"]
    weight = metrics.get(WEIGHT_KEY)
    update = masked_input(sent, reply.content["arrays"], weight, float(config[MAX_WEIGHT_KEY]),
                          float(config[CLIP_KEY]))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), int(weight), {})
    content = legacy_records.fitres_to_recorddict(fitres, keep_input=False)
    content["metrics"] = metrics
    return Message(content, reply_to=msg)


def masked_input(sent: ArrayRecord, trained: ArrayRecord, weight, max_weight: float, clip: float) -> list[np.ndarray]:
    """The updates (trained - sent, float64) SecAgg+ will weight, quantise and mask; a
    FedharError naming the problem for what it could not sum faithfully."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= max_weight:
        raise FedharError(f"secure aggregation: weight {WEIGHT_KEY}={weight!r} must be an integer in 1..{max_weight:g} "
                          f"(the bound the server announced)")
    keys = travelling_keys(sent)
    extra = sorted(set(trained.keys()) - set(sent.keys()))
    missing = [k for k in keys if k not in trained]
    if extra or missing:
        raise FedharError(f"secure aggregation sums the tensors the server sent: this client sends {extra or 'none'} "
                          f"besides them and leaves out {missing or 'none'}")
    out = []
    for key in keys:
        new, old = trained[key].numpy(), sent[key].numpy()
        if new.shape != old.shape:
            raise FedharError(f"secure aggregation: {key} has shape {new.shape}, the server sent {old.shape}")
        delta = new.astype(np.float64) - old.astype(np.float64)
        if not np.isfinite(delta).all():
            raise FedharError(f"secure aggregation: the update of {key} is not finite (a masked NaN or Inf would turn "
                              f"into an arbitrary number of the sum): not sent")
        if delta.size and (peak := float(np.abs(delta).max())) > clip:
            raise FedharError(f"secure aggregation: the update of {key} reaches {peak:.3g}, outside "
                              f"--secagg-clip {clip:g} (SecAgg+ would clip it): raise --secagg-clip")
        out.append(delta)
    return out


# ---- server ---------------------------------------------------------------------------

class _Node:
    """What SecAggPlusWorkflow reads of a legacy ClientProxy: its node id."""

    def __init__(self, node_id: int):
        self.node_id = node_id


class _Shim(legacy.Strategy):
    """The legacy Strategy SecAggPlusWorkflow drives: ``configure_fit`` names the round's
    nodes (their messages are fedhar's, ``_Workflow``); ``aggregate_fit`` receives the
    unmasked weighted mean (every result's parameters are the mean)."""

    def __init__(self, node_ids: list[int]):
        self.node_ids = node_ids
        self.mean: list[np.ndarray] | None = None

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(_Node(nid), FitIns(Parameters(tensors=[], tensor_type=""), {})) for nid in self.node_ids]

    def aggregate_fit(self, server_round, results, failures):
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _Workflow(workflow.SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, sending fedhar's train message (plus the protocol's
    record) to each node in the collect-masked-vectors stage instead of a legacy FitIns."""

    def __init__(self, contents: dict[int, RecordDict], **kwargs):
        super().__init__(**kwargs)
        self.contents = contents

    def setup_stage(self, grid, context, state) -> bool:
        ok = super().setup_stage(grid, context, state)
        state.nid_to_fitins = {nid: self.contents[nid] for nid in state.nid_to_fitins}
        return ok


@dataclass
class _Exchange:
    """The grid SecAggPlusWorkflow sends through: the round loop's ``exchange``; each node's
    replies kept; a masked vector of other shapes than the travelling tensors' (the one check
    left on a client's own reply) turned into an error reply, so the protocol drops it."""

    grid: object
    timeout: float
    shapes: list[tuple[int, ...]]
    collected: dict[int, Message] = field(default_factory=dict)  # node id -> its reply with the masked vector
    failed: dict[int, Message] = field(default_factory=dict)  # node id -> its last error reply

    def reply_of(self, node_id: int) -> Message | None:
        """The node's row: its masked-vector reply (it was summed), else its last error."""
        return self.collected.get(node_id) or self.failed.get(node_id)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        collecting = bool(messages) and messages[0].content[RECORD_KEY_CONFIGS][Key.STAGE] == Stage.COLLECT_MASKED_VECTORS
        replies = exchange(self.grid, messages, self.timeout)
        if collecting:
            replies = [self._checked(r) for r in replies]
        for r in replies:
            if collecting and not r.has_error():
                self.collected[r.metadata.src_node_id] = r
            elif r.has_error():
                self.failed[r.metadata.src_node_id] = r
        return replies

    def _checked(self, reply: Message) -> Message:
        if reply.has_error():
            return reply
        try:
            payload = reply.content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
            masked = [bytes_to_ndarray(b) for b in payload]
            legacy_records.recorddict_to_fitres(reply.content, keep_input=True)
            # what the client uploaded is the masked vector (integers), not the tensors it measured
            reply.content["metrics"][BYTES_SENT_KEY] = sum(len(b) for b in payload)
        except Exception as e:  # noqa: BLE001  a reply the workflow could not read
            return _error(reply, f"secure aggregation: unreadable masked reply ({type(e).__name__}: {e})")
        shapes = [a.shape for a in masked[1:]]
        if shapes != self.shapes:
            return _error(reply, f"secure aggregation: masked tensors of shapes {shapes}, expected {self.shapes}")
        return reply

    def __getattr__(self, name):
        return getattr(self.grid, name)


def _error(reply: Message, reason: str) -> Message:
    flwr_log(WARNING, "node %d: %s", reply.metadata.src_node_id, reason)
    return Message(error=Error(code=ErrorCode.UNKNOWN, reason=reason), metadata=reply.metadata)


@dataclass
class SecureRound:
    """One train phase under SecAgg+: each node's reply (metrics only, or an error), and the
    unmasked weighted mean of the updates by tensor name (None, with ``why``, if the protocol
    halted)."""

    replies: list[Message]
    sent: ArrayRecord  # what the server sent (the global, as the rule's downlink shaped it)
    mean: dict[str, np.ndarray] | None
    why: str = ""


@dataclass(frozen=True)
class SecureAggregation:
    """A run's SecAgg+ settings (``for_run``): the weight bound (the largest client's
    training windows), the per-coordinate range of an update, the share of a round's
    clients needed to unmask, the timeout of each protocol stage."""

    max_weight: int
    clip: float
    threshold: float
    timeout: float

    @classmethod
    def for_run(cls, cfg, max_weight: int) -> SecureAggregation | None:
        if not cfg.secagg:
            return None
        return cls(max(1, int(max_weight)), cfg.secagg_clip, cfg.secagg_threshold, cfg.round_timeout)

    def train(self, grid, messages: list[Message], server_round: int) -> SecureRound:
        """Run SecAgg+ over the train ``messages`` (one per sampled node, the rule's)."""
        sent = messages[0].content["arrays"]
        keys = travelling_keys(sent)
        contents = {}
        for m in messages:
            content = RecordDict(dict(m.content.items()))  # its own dict: the workflow adds a record per node
            content["config"] = ConfigRecord({**dict(m.content["config"].items()), MAX_WEIGHT_KEY: self.max_weight,
                                              CLIP_KEY: self.clip})
            contents[m.metadata.dst_node_id] = content
        shim = _Shim(list(contents))
        flow = _Workflow(contents, num_shares=1.0, reconstruction_threshold=self.threshold,
                         max_weight=float(self.max_weight), clipping_range=self.clip,
                         quantization_range=QUANTIZATION_RANGE, modulus_range=MODULUS_RANGE, timeout=self.timeout)
        context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                                config=ServerConfig(num_rounds=server_round), strategy=shim,
                                client_manager=SimpleClientManager())
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        channel = _Exchange(grid, self.timeout, [tuple(sent[k].numpy().shape) for k in keys])
        flow(channel, context)
        replies = [r for n in contents if (r := channel.reply_of(n)) is not None]
        if shim.mean is None:
            n = len(contents)
            why = (f"SecAgg+ halted: too few of the {n} clients left to unmask "
                   f"(threshold {max(2, round(self.threshold * n))} of {n}, --secagg-threshold {self.threshold:g})")
            flwr_log(WARNING, "round %d: %s", server_round, why)
            return SecureRound(replies, sent, None, why)
        return SecureRound(replies, sent, dict(zip(keys, shim.mean, strict=True)))

    def aggregate(self, strategy, server_round: int, result: SecureRound, log) -> ArrayRecord | None:
        """The new global from the unmasked mean: the rule aggregates one reply, the mean
        (weight 1), after its checks. One row per client reply as without SecAgg+; None (the
        global unchanged, the clients' rows "not aggregated") when the protocol halted or
        the rule rejected the mean."""
        rows = reply_rows(server_round, "train", result.replies)
        new, why = None, result.why
        if result.mean is not None:
            new, _ = strategy.aggregate_unrecorded(server_round, [self._mean_reply(result)])
            rejected = getattr(strategy, "last_rejected", {}).get(SUPERLINK_NODE_ID)
            why = f"the unmasked aggregate was rejected: {rejected}" if new is None else ""
        summed = sum(r["status"] == "ok" for r in rows)
        for row in rows:
            if why and row["status"] == "ok":
                row.update(status="not aggregated", error=why)
            log.add(row)
        # the round's record of the protocol: how many masked updates were summed (and unmasked)
        aggregate = {"round": server_round, "phase": "aggregate", "secagg_clients": summed}
        if why:
            log.add({**aggregate, "status": "skipped", "error": why})
        else:
            log.add({**aggregate, "status": "ok"})
            flwr_log(INFO, "round %d: SecAgg+ unmasked the mean of %d clients", server_round, summed)
        log.flush()
        return new

    def _mean_reply(self, result: SecureRound) -> Message:
        """The mean as one reply: global + mean update for every travelling tensor, the
        global's value for the others (integer tensors); weight 1."""
        state = {}
        for key, value in result.sent.items():
            if is_delta_key(key):
                continue
            old = value.numpy()
            new = old.astype(np.float64) + result.mean[key] if key in result.mean else old
            state[key] = Array(np.array(new, dtype=old.dtype, order="C"))
        template = next(r for r in result.replies if not r.has_error())
        metadata = with_metadata(template, src_node_id=SUPERLINK_NODE_ID).metadata
        content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({WEIGHT_KEY: 1})})
        return Message(content=content, metadata=metadata)
