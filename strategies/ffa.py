"""FFA-LoRA (Sun et al., ICLR 2024): A random, shared and frozen; only B (and the head) train.

Server: ``FFALoRA``. Client: A is frozen at its seeded initialisation (``prepare_model``,
on the server too, so A is not in the trainable state and never travels): half the bytes.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fedhar import lora_math as lm
from strategies.base import Rule
from strategies.fedit import FedIT


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




class FFARule(Rule):
    summary = "FFA-LoRA: A frozen and shared, only B averaged (exact)"
    exact = True
    server_class = FFALoRA
    central_dp = "B and a shared head are clipped and noised; A is seeded random and frozen, never trained on data, never sent"

    def prepare_model(self, model) -> None:
        # A stays at its seeded random init, the same on every side (build_model seeds it)
        for name, p in model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad = False
