"""Reply validation for Flower's own strategies (FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad).

fedhar's LoRA strategies validate every reply themselves; Flower's do not, and one NaN
would poison the global adapters. ``validated(cls)`` drops (and logs) replies whose
tensors are missing, unexpected, wrongly shaped or non-finite before the parent
aggregates, using the same checks (``lora_math.check_update``).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

from flwr.app import Message
from flwr.supercore import log

from strategies import lora_math as lm


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
            return super().aggregate_train(server_round, kept)

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
