"""FedIT (= fedavg): FedAvg on A and B separately, and the validating base of every LoRA rule.

``FedIT`` is a ``flwr.serverapp.strategy.FedAvg`` (Flower 1.41 Message API) with the same
constructor keywords, plus its own keyword-only ones, so ``strategies.recording(cls)``
wraps it unchanged. The other LoRA rules subclass it and override its hooks
(``observe_global``, ``downlink``, ``optional_keys``, ``max_rank``, ``extra_problems``,
``aggregate_states``). The mathematics lives in ``fedhar.lora_math``.

Every such strategy checks each training reply before aggregating it and rejects (logs at
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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedhar import lora_math as lm
from strategies.base import Rule
from strategies.records import is_delta_key, numpy_to_record, record_to_numpy


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
    fresh_adapters = False  # whether clients start every round from fresh adapters (FLoRA)

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
        return lm.weighted_mean(states, weights), inexactness_metric(states, weights)

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


def inexactness_metric(states: list[dict], weights: list[float]) -> dict:
    layers = lm.adapter_keys(states[0])
    values = [lm.inexactness(states, weights, layer) for layer in layers]
    finite = [v for v in values if np.isfinite(v)]
    return {"lora-inexactness": float(np.mean(finite))} if finite else {}


def without_part(arrays: ArrayRecord, part: str) -> ArrayRecord:
    """``arrays`` without the lora_<part> tensors (same Array objects, no copy)."""
    return ArrayRecord({k: v for k, v in arrays.items() if lm.adapter_part(k) != part})




class FedITRule(Rule):
    summary = "FedAvg on A and B separately (FedIT); also full fine-tuning"
    server_class = FedIT
    any_model = True
    central_dp = "every tensor a client sends (A, B, a shared head) is clipped as one update and noised"
