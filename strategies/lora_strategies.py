"""Flower strategies for federated LoRA: FedIT, FFA-LoRA, FedSA-LoRA, FedEx-LoRA, FLoRA, HetLoRA.

Each is a ``flwr.serverapp.strategy.FedAvg`` (Flower 1.41 Message API) with the same
constructor keywords, plus its own keyword-only ones, so ``strategies.recording(cls)``
wraps it unchanged. The mathematics lives in ``strategies.lora_math``; this module moves
tensors between Flower records and those functions.

Every strategy checks each training reply before aggregating it and rejects (logs at
WARNING and never averages in) a reply with: no ArrayRecord, no usable weight (missing,
not a finite number > 0), missing or unexpected tensors, wrong shapes, non-numeric or
NaN/Inf values, mismatched A/B ranks, or a strategy-specific fault (FFA: A moved). The
reasons of the last round are in ``strategy.last_rejected`` (node id -> reason), all of
them in ``strategy.rejections``; the round's MetricRecord carries ``rejected-replies``.
If every reply is rejected, the round aggregates nothing and the global model stays.

Reference shapes (what a valid reply holds) are taken from the first arrays the strategy
sends (``initial_arrays`` = the server's ``trainable_state_dict``; pass it complete, with
A and B even where a strategy sends less), or given as ``reference_shapes=``. Without
either, the most common key/shape set among the replies is used.

Dense full-precision updates of the frozen base (FedEx residuals, FLoRA merged products)
travel as ``<layer>.base_delta`` (d_out x d_in, float32; <layer> as in the LoRA names,
e.g. ``encoder.blocks.0.attn.q.base_delta``). The server keeps their running sum over
rounds, so a client that skipped rounds, or rebuilds its model on every call as the
simulation does, still gets the whole update. Clients never send them back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from strategies import lora_math as lm

DELTA_SUFFIX = ".base_delta"


def delta_key(layer: str) -> str:
    """Name under which a layer's dense base update travels."""
    return layer + DELTA_SUFFIX


def is_delta_key(key: str) -> bool:
    return key.endswith(DELTA_SUFFIX)


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def numpy_to_record(state: Mapping[str, np.ndarray], dtypes: Mapping[str, np.dtype] | None = None) -> ArrayRecord:
    """float64 results back to what travels: the reference dtype (ints rounded), else float32."""
    out = {}
    for key, value in state.items():
        dtype = np.dtype((dtypes or {}).get(key, np.float32))
        value = np.asarray(value)
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(value.dtype, np.integer):
            value = np.rint(value)
        out[key] = Array(np.array(value, dtype=dtype, order="C"))  # not ascontiguousarray: it makes 0-d 1-d
    return ArrayRecord(out)


class FedIT(FedAvg):
    """FedIT: FedAvg on A and B separately (and on the head), with reply validation.

    Aggregate: every tensor averaged by example weight, so the layer update becomes
    mean(B) mean(A), not the clients' mean update (``lora_math.fedit_error``). The round's
    metrics carry ``lora-inexactness``, the mean over layers of
    ||ideal - mean(B) mean(A)||_F / ||ideal||_F (absent when no LoRA layer travels).

    Client contract: as for FedAvg. Load every received tensor, train A, B and the head,
    send ``trainable_state_dict`` back with ``num-examples`` in the MetricRecord.
    Works for full fine-tuning too (no LoRA tensors: plain validated FedAvg).
    """

    any_rank = False  # whether replies may differ from the reference along the rank axis

    def __init__(self, *args, reference_shapes: Mapping[str, tuple[int, ...]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_shapes = dict(reference_shapes) if reference_shapes is not None else None
        self.reference_dtypes: dict[str, np.dtype] = {}
        self.last_rejected: dict[int, str] = {}
        self.rejections: list[dict] = []  # {"round", "node_id", "reason"} for every rejection

    # ---- hooks for the LoRA variants -------------------------------------------------
    def observe_global(self, arrays: ArrayRecord) -> None:
        """Called with the global arrays before each round; the first call fixes the reference."""
        if self.reference_shapes is None or not self.reference_dtypes:
            state = record_to_numpy(arrays)
            if self.reference_shapes is None:
                self.reference_shapes = {k: v.shape for k, v in state.items() if not is_delta_key(k)}
            self.reference_dtypes = {k: v.dtype for k, v in state.items()}

    def downlink(self, arrays: ArrayRecord) -> ArrayRecord:
        """What the server sends for the global ``arrays`` (unchanged here)."""
        return arrays

    def optional_keys(self) -> set[str]:
        return set()

    def max_rank(self) -> int | None:
        return None

    def extra_problems(self, state: dict[str, np.ndarray]) -> list[str]:
        """Strategy-specific reasons to reject an otherwise well-formed reply."""
        return []

    def aggregate_states(self, states: list[dict], weights: list[float],
                         node_ids: list[int]) -> tuple[dict[str, np.ndarray], dict]:
        """The new global state and extra round metrics."""
        return lm.weighted_mean(states, weights), _inexactness_metric(states, weights)

    # ---- Flower API ------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.observe_global(arrays)
        return super().configure_train(server_round, self.downlink(arrays), config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self.observe_global(arrays)
        return super().configure_evaluate(server_round, self.downlink(arrays), config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._accept(server_round, list(replies))
        if not accepted:
            return None, None
        node_ids = [nid for nid, _, _, _ in accepted]
        states = [state for _, state, _, _ in accepted]
        weights = [w for _, _, w, _ in accepted]
        new_state, extra = self.aggregate_states(states, weights, node_ids)
        dtypes = {**{k: v.dtype for k, v in states[0].items()}, **self.reference_dtypes}
        metrics = self.train_metrics_aggr_fn([c for _, _, _, c in accepted], self.weighted_by_key)
        metrics["rejected-replies"] = len(self.last_rejected)
        for key, value in extra.items():
            metrics[key] = value
        return numpy_to_record(new_state, dtypes), metrics

    # ---- validation ------------------------------------------------------------------
    def _accept(self, server_round: int, replies: list[Message]) -> list[tuple[int, dict, float, RecordDict]]:
        """(node id, state, weight, content) of the replies that pass every check."""
        self.last_rejected = {}
        parsed, failures = [], 0
        for msg in replies:
            nid = msg.metadata.src_node_id
            if msg.has_error():
                failures += 1
                log(INFO, "\t> Received error in reply from node %d: %s", nid, msg.error.reason)
                continue
            try:
                state, weight = self._parse(msg.content)
            except ValueError as e:
                self._reject(server_round, nid, str(e))
                continue
            parsed.append((nid, state, weight, msg.content))
        reference = self.reference_shapes
        if reference is None and parsed:
            reference = self._majority_shapes([state for _, state, _, _ in parsed])
        accepted = []
        for nid, state, weight, content in parsed:
            problems = lm.check_update(state, reference, any_rank=self.any_rank, max_rank=self.max_rank(),
                                       optional_keys=self.optional_keys())
            problems = problems or self.extra_problems(state)
            if problems:
                self._reject(server_round, nid, "; ".join(problems))
            else:
                accepted.append((nid, state, weight, content))
        log(INFO, "aggregate_train: %d accepted, %d rejected, %d failures",
            len(accepted), len(self.last_rejected), failures)
        return accepted

    def _parse(self, content: RecordDict) -> tuple[dict[str, np.ndarray], float]:
        records = content.array_records
        if self.arrayrecord_key in records:
            record = records[self.arrayrecord_key]
        elif len(records) == 1:
            record = next(iter(records.values()))
        else:
            raise ValueError(f"expected one ArrayRecord, got {len(records)}")
        if not content.metric_records:
            raise ValueError("no MetricRecord")
        metrics = next(iter(content.metric_records.values()))
        weight = metrics.get(self.weighted_by_key)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not np.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight {self.weighted_by_key!r} must be a finite number > 0, got {weight!r}")
        try:
            state = record_to_numpy(record)
        except Exception as e:  # a payload that does not decode is a bad reply, not a crash
            raise ValueError(f"arrays do not decode: {e}") from None
        return state, float(weight)

    def _reject(self, server_round: int, node_id: int, reason: str) -> None:
        log(WARNING, "aggregate_train: rejected the reply of node %d: %s", node_id, reason)
        self.last_rejected[node_id] = reason
        self.rejections.append({"round": server_round, "node_id": node_id, "reason": reason})

    def _majority_shapes(self, states: list[dict]) -> dict[str, tuple[int, ...]]:
        def signature(state):
            shapes = []
            for key, value in sorted(state.items()):
                shape = np.shape(value)
                part = lm.split_adapter_key(key)
                if self.any_rank and part and len(shape) == 2:
                    shape = (shape[0], -1) if part[1] == "B" else (-1, shape[1])
                shapes.append((key, shape))
            return tuple(shapes)

        common, _ = Counter(signature(s) for s in states).most_common(1)[0]
        chosen = next(s for s in states if signature(s) == common)
        log(WARNING, "aggregate_train: no reference shapes known; using the most common reply layout")
        return {k: np.shape(v) for k, v in chosen.items()}


def _inexactness_metric(states: list[dict], weights: list[float]) -> dict:
    layers = lm.adapter_keys(states[0])
    values = [lm.inexactness(states, weights, layer) for layer in layers]
    finite = [v for v in values if np.isfinite(v)]
    return {"lora-inexactness": float(np.mean(finite))} if finite else {}


def _without(arrays: ArrayRecord, part: str) -> ArrayRecord:
    """``arrays`` without the lora_<part> tensors (same Array objects, no copy)."""
    return ArrayRecord({k: v for k, v in arrays.items() if lm.adapter_part(k) != part})


class FFALoRA(FedIT):
    """FFA-LoRA (Sun et al., ICLR 2024): A random, shared and frozen; only B trains.

    Aggregate: B and the head averaged by example weight; A passed through. Exact, since
    mean(B) A = sum_k p_k B_k A. A reply whose A differs from the A the server sent (or,
    before the server has sent one, from the first valid reply's) is rejected.

    Client contract: never train A (``requires_grad = False`` on every ``lora_A``). Two
    ways, both accepted: (a) freeze A on server and clients alike, so A is not in
    ``trainable_state_dict`` and never travels (half the bytes; A is the same everywhere
    because ``build_model`` seeds the initialisation); or (b) keep A in the exchanged
    state, load it from the server, send it back unchanged (bit-identical).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shared_a: dict[str, np.ndarray] = {}

    def observe_global(self, arrays: ArrayRecord) -> None:
        super().observe_global(arrays)
        for key, value in arrays.items():
            if lm.adapter_part(key) == "A":
                self.shared_a[key] = value.numpy()

    def optional_keys(self) -> set[str]:
        return {k for k in self.reference_shapes or {} if lm.adapter_part(k) == "A"}

    def extra_problems(self, state):
        problems = []
        for key, value in state.items():
            if lm.adapter_part(key) != "A":
                continue
            shared = self.shared_a.setdefault(key, value)
            if not np.array_equal(shared, value):
                diff = np.abs(shared.astype(np.float64) - value.astype(np.float64)).max()
                problems.append(f"{key} changed (max |diff| {diff:.3g}): FFA-LoRA clients must not train A")
        return problems

    def aggregate_states(self, states, weights, node_ids):
        out = lm.ffa_aggregate(states, weights)
        for key in self.optional_keys():  # keep the global complete even if replies left A out
            if key in self.shared_a:
                out.setdefault(key, self.shared_a[key])
        return out, {}


class FedSALoRA(FedIT):
    """FedSA-LoRA (Guo et al., ICLR 2025): A shared and averaged, each B stays local.

    Aggregate: A and the head averaged by example weight; no B in the global state, and
    the server sends none (B keys are stripped from the downlink, initial arrays included).
    The result is a personalised model per client, B_k mean(A).

    Client contract: keep your own B in ``context.state`` (an ArrayRecord, e.g. under
    ``"fedsa-b"``) across rounds; on every train and evaluate message load A and the
    head from the server and B from ``context.state`` (the fresh zero B on the first
    call); after training store B back. Sending B to the server is allowed (it is checked
    but never averaged); leaving it out saves the uplink.
    """

    def downlink(self, arrays):
        return _without(arrays, "B")

    def optional_keys(self) -> set[str]:
        return {k for k in self.reference_shapes or {} if lm.adapter_part(k) == "B"}

    def aggregate_states(self, states, weights, node_ids):
        return lm.fedsa_aggregate(states, weights), {}


class _BaseDelta:
    """Server-side running sum of dense base updates, one d_out x d_in float64 per layer."""

    def __init__(self):
        self.sum: dict[str, np.ndarray] = {}

    def load(self, arrays: ArrayRecord) -> None:
        """Resume from a global record that already carries base deltas (first call only)."""
        if not self.sum:
            self.sum = {k[: -len(DELTA_SUFFIX)]: v.numpy().astype(np.float64)
                        for k, v in arrays.items() if is_delta_key(k)}

    def add(self, layer: str, update: np.ndarray) -> None:
        self.sum[layer] = self.sum.get(layer, 0.0) + update

    def with_deltas(self, arrays: ArrayRecord, reference: Mapping[str, tuple[int, ...]]) -> ArrayRecord:
        """``arrays`` plus ``<layer>.base_delta`` for every adapted layer (zeros before round 1)."""
        out = {k: v for k, v in arrays.items() if not is_delta_key(k)}
        for layer, (ka, kb) in lm.adapter_keys(dict(reference)).items():
            shape = (reference[kb][0], reference[ka][1])
            delta = self.sum.get(layer, np.zeros(shape))
            out[delta_key(layer)] = Array(np.array(delta, dtype=np.float32, order="C"))
        return ArrayRecord(out)


class FedExLoRA(FedIT):
    """FedEx-LoRA (Singhal et al., ACL 2025): FedIT plus the exact residual, sent dense.

    Aggregate: mean(A), mean(B), mean(head) as FedIT, and per layer the residual
    s (sum_k p_k B_k A_k - mean(B) mean(A)), s = lora_alpha / r, added to the server's
    running sum. The global state carries that sum as ``<layer>.base_delta``, so
    W0 + delta + s mean(B) mean(A) equals W0 plus every round's mean client update.
    Needs equal ranks. Downlink: d_out x d_in extra floats per adapted layer.

    Client contract: load A, B and the head as usual, and every ``<layer>.base_delta``
    into a full-precision (float32) buffer of that layer, replaced (not added to) on
    every message, that the layer adds to its output: y = base(x) + x @ delta.T + lora(x).
    For NF4 bases it must stay such a separate buffer: requantising it into the 4-bit
    weights would erase small updates. Do not train the buffer or send it back.
    """

    def __init__(self, *args, lora_alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_alpha = float(lora_alpha)
        self.base_delta = _BaseDelta()

    def observe_global(self, arrays):
        super().observe_global(arrays)
        self.base_delta.load(arrays)

    def downlink(self, arrays):
        return self.base_delta.with_deltas(arrays, self.reference_shapes)

    def aggregate_states(self, states, weights, node_ids):
        out = lm.weighted_mean(states, weights)
        for layer, rank in lm.adapter_ranks(states[0]).items():  # equal ranks: checked per reply
            self.base_delta.add(layer, self.lora_alpha / rank * lm.fedit_error(states, weights, layer))
        out.update({delta_key(layer): value for layer, value in self.base_delta.sum.items()})
        return out, _inexactness_metric(states, weights)


class FLoRA(FedIT):
    """FLoRA (Wang et al., NeurIPS 2024): stacked adapters, exact with any client ranks.

    Aggregate: per layer, the clients' A_k stacked along the rank axis and p_k s_k B_k
    (s_k = lora_alpha / r_k) along the columns; B_stack @ A_stack = sum_k p_k s_k B_k A_k
    is added to the server's running sum, sent as ``<layer>.base_delta``. The head is
    averaged by example weight. The global state has no adapters: every round starts
    from fresh ones. ``last_stacks`` keeps the round's stacks; the metric
    ``flora-stack-params`` counts what sending the stacks instead of the dense sum would
    cost (the paper's downlink, valid only for stateful clients that join every round).

    Client contract: build fresh adapters of your own rank each round (peft's init: B = 0,
    A random; seed it per round, e.g. with the server round), load the head and every
    ``<layer>.base_delta`` into the layer's full-precision buffer as for FedEx-LoRA (not
    into NF4 weights), train, send adapters and head back; all clients use one
    ``lora_alpha``. With B = 0 at the start, evaluation sees W0 + delta exactly.
    """

    any_rank = True

    def __init__(self, *args, lora_alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_alpha = float(lora_alpha)
        self.base_delta = _BaseDelta()
        self.last_stacks: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def observe_global(self, arrays):
        super().observe_global(arrays)
        self.base_delta.load(arrays)

    def downlink(self, arrays):
        no_adapters = ArrayRecord({k: v for k, v in arrays.items() if lm.split_adapter_key(k) is None})
        return self.base_delta.with_deltas(no_adapters, self.reference_shapes)

    def aggregate_states(self, states, weights, node_ids):
        scales = [{layer: self.lora_alpha / r for layer, r in lm.adapter_ranks(s).items()} for s in states]
        self.last_stacks = lm.flora_stack(states, weights, scales)
        for layer, (A_stack, B_stack) in self.last_stacks.items():
            self.base_delta.add(layer, B_stack @ A_stack)
        others = [{k: s[k] for k in lm.other_keys(s)} for s in states]
        out = lm.weighted_mean(others, weights)
        out.update({delta_key(layer): value for layer, value in self.base_delta.sum.items()})
        stack_params = sum(A.size + B.size for A, B in self.last_stacks.values())
        return out, {"flora-stack-params": int(stack_params)}


class HetLoRA(FedIT):
    """HetLoRA (Cho et al., EMNLP 2024): per-client ranks, zero-padded sparsity-weighted mean.

    Aggregate: each client's A (rows) and B (columns) zero-padded to ``max_rank``, weighted
    by p_k ||s_k B_k A_k||_F (normalised), averaged; the head by example weight. Not exact.
    ``rank_scaled`` (default, peft's s = lora_alpha / r with one alpha for all clients):
    B is rescaled between ranks so that the effective update survives padding and
    truncation. ``max_rank`` defaults to the rank of the initial arrays.

    Messages: the server learns each node's ranks from the shapes of its replies and from
    then on sends it the global truncated to them (one Message per node, train and
    evaluate); a node it has not heard from gets the full-rank global.

    Client contract: your rank r_k is your own (from your config). If what arrives has a
    larger rank, cut it down with ``lora_math.hetlora_truncate(state, r_k)`` (B rescaled
    by r_k / R) before loading; train; send adapters of rank r_k and the head back. A
    client may also prune its rank between rounds (the paper's self-pruning): the server
    follows the shapes it receives. Ranks above ``max_rank`` are rejected.
    """

    any_rank = True

    def __init__(self, *args, max_rank: int | None = None, rank_scaled: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_rank = max_rank
        self.rank_scaled = rank_scaled
        self.node_ranks: dict[int, dict[str, int]] = {}

    def max_rank(self) -> int | None:
        if self._max_rank is None and self.reference_shapes is not None:
            ranks = [shape[0] for key, shape in self.reference_shapes.items() if lm.adapter_part(key) == "A"]
            return max(ranks) if ranks else None
        return self._max_rank

    def aggregate_states(self, states, weights, node_ids):
        for nid, state in zip(node_ids, states):
            self.node_ranks[nid] = lm.adapter_ranks(state)
        max_rank = self.max_rank() or max(max(lm.adapter_ranks(s).values(), default=1) for s in states)
        return lm.hetlora_aggregate(states, weights, max_rank, self.rank_scaled), {}

    def configure_train(self, server_round, arrays, config, grid):
        messages = super().configure_train(server_round, arrays, config, grid)
        return self._per_node(messages, arrays, MessageType.TRAIN)

    def configure_evaluate(self, server_round, arrays, config, grid):
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        return self._per_node(messages, arrays, MessageType.EVALUATE)

    def _per_node(self, messages: Iterable[Message], arrays: ArrayRecord, message_type: str) -> list[Message]:
        """Replace each known node's arrays by the global truncated to its ranks."""
        full = record_to_numpy(arrays)
        full_ranks = lm.adapter_ranks(full)
        dtypes = {k: v.dtype for k, v in full.items()}
        cache: dict[tuple, ArrayRecord] = {}
        out = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            ranks = {layer: min(r, full_ranks[layer]) for layer, r in self.node_ranks.get(nid, {}).items()
                     if layer in full_ranks}
            if not ranks or ranks == full_ranks:
                out.append(msg)
                continue
            key = tuple(sorted(ranks.items()))
            if key not in cache:
                cache[key] = numpy_to_record(lm.hetlora_truncate(full, {**full_ranks, **ranks}, self.rank_scaled),
                                             dtypes)
            content = RecordDict({self.arrayrecord_key: cache[key],
                                  self.configrecord_key: msg.content[self.configrecord_key]})
            out.append(Message(content=content, dst_node_id=nid, message_type=message_type))
        return out

