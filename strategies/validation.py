"""Reply validation for Flower's own strategies (FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad).

fedhar's LoRA strategies validate every reply themselves; Flower's do not, and one NaN
would poison the global adapters. ``validated(cls)`` drops (and logs) replies whose
tensors are missing, unexpected, wrongly shaped or non-finite before the parent
aggregates, using the same checks (``lora_math.check_update``).

It also keeps normalisation statistics out of the server optimisers. FedAvgM, FedAdam,
FedYogi and FedAdagrad treat every array as a parameter and step along a pseudo-gradient
with momentum or adaptive scaling; applied to BatchNorm's running variance that step
overshoots below zero (seen: FedAvgM on UCI-HAR, running_var -0.33 at round 8, the model
collapsed to one class). Buffers (running_mean, running_var, num_batches_tracked) are
statistics, not parameters: they get the plain example-weighted average of the replies.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.common import log

from fedhar import lora_math as lm

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def is_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in BUFFERS


def validated(strategy_cls: type) -> type:
    class Validated(strategy_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.reference_shapes = None
            self.last_rejected: dict[int, str] = {}
            self.rejections: list[dict] = []

        def configure_train(self, server_round, arrays, config, grid):
            if self.reference_shapes is None:
                self.reference_shapes = {k: tuple(v.numpy().shape) for k, v in arrays.items()}
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):
            self.last_rejected = {}
            kept = []
            for msg in replies:
                problems = [] if msg.has_error() else self._problems(msg)
                if problems:
                    reason = "; ".join(problems)
                    nid = msg.metadata.src_node_id
                    log(WARNING, "aggregate_train: rejected the reply of node %d: %s", nid, reason)
                    self.last_rejected[nid] = reason
                    self.rejections.append({"round": server_round, "node_id": nid, "reason": reason})
                else:
                    kept.append(msg)
            if not any(not m.has_error() for m in kept):
                return None, None
            arrays, metrics = super().aggregate_train(server_round, kept)
            if arrays is not None:
                arrays = self._average_buffers(arrays, [m for m in kept if not m.has_error()])
            return arrays, metrics

        def _average_buffers(self, arrays: ArrayRecord, replies: list[Message]) -> ArrayRecord:
            """``arrays`` with every normalisation buffer replaced by the weighted mean of the replies'."""
            buffers = [k for k in arrays if is_buffer(k)]
            if not buffers:
                return arrays
            weights = np.array([float(next(r[self.weighted_by_key] for r in m.content.metric_records.values()
                                           if self.weighted_by_key in r)) for m in replies])
            weights = weights / weights.sum()
            out = dict(arrays.items())
            for key in buffers:
                values = [m.content.array_records[self.arrayrecord_key][key].numpy() for m in replies]
                mean = sum(w * v.astype(np.float64) for w, v in zip(weights, values))
                out[key] = Array(np.asarray(mean).astype(values[0].dtype))
            return ArrayRecord(out)

        def _problems(self, msg: Message) -> list[str]:
            records = msg.content.array_records
            if self.arrayrecord_key not in records:
                return ["no ArrayRecord"]
            try:
                state = {k: v.numpy() for k, v in records[self.arrayrecord_key].items()}
            except Exception as e:  # undecodable payload: a bad reply, not a server crash
                return [f"arrays do not decode: {e}"]
            return lm.check_update(state, self.reference_shapes or {k: v.shape for k, v in state.items()})

    Validated.__name__ = Validated.__qualname__ = f"Validated{strategy_cls.__name__}"
    return Validated
