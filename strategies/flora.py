"""FLoRA (Wang et al., NeurIPS 2024): stacked adapters merged into the base, any client ranks.

Server: ``FLoRA``. Client: fresh adapters of its own rank every round, seeded with the
round (``fresh_adapters``); the merged product arrives as ``<layer>.base_delta``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fedhar import lora_math as lm
from strategies.base import Rule
from strategies.fedit import FedIT
from strategies.records import BaseDelta, delta_key


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
    fresh_adapters = True

    def __init__(self, *args, lora_alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_alpha = float(lora_alpha)
        self.base_delta = BaseDelta()
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




class FLoRARule(Rule):
    summary = "FLoRA: stacked adapters merged into the base (exact, any ranks)"
    exact = True
    server_class = FLoRA

    def server_options(self, cfg) -> dict:
        return {"lora_alpha": cfg.lora_alpha}
