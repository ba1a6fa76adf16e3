"""How rules' tensors travel: Flower ArrayRecords <-> numpy, and dense base updates.

Dense full-precision updates of the frozen base (FedEx residuals, FLoRA merged products)
travel as ``<layer>.base_delta`` (d_out x d_in, float32; <layer> as in the LoRA names,
e.g. ``encoder.blocks.0.attn.q.base_delta``). The server keeps their running sum over
rounds (``BaseDelta``), so a client that skipped rounds, or rebuilds its model on every
call as the simulation does, still gets the whole update. Every client adds whatever
base deltas arrive to its layers (``fedhar.model.base_delta.add_base_deltas``) and never sends
them back.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fedhar import lora_math as lm

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



class BaseDelta:
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
