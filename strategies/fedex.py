"""FedEx-LoRA (Singhal et al., ACL 2025): FedIT plus the exact residual, sent dense.

Server: ``FedExLoRA``. Client: as FedAvg; the residual arrives as ``<layer>.base_delta``,
which every client adds to its layers (``strategies.records``).
"""

from __future__ import annotations

from fedhar import lora_math as lm
from strategies.base import Rule
from strategies.fedit import FedIT, inexactness_metric
from strategies.records import BaseDelta, delta_key


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
        self.base_delta = BaseDelta()

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
        return out, inexactness_metric(states, weights)




class FedExRule(Rule):
    summary = "FedEx-LoRA: FedIT + the exact residual on the base (exact)"
    exact = True
    server_class = FedExLoRA

    def server_options(self, cfg) -> dict:
        return {"lora_alpha": cfg.lora_alpha}
