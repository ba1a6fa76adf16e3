"""FedSA-LoRA (Guo et al., ICLR 2025): A shared and averaged, each B stays on its client.

Server: ``FedSALoRA`` (no B in the global state or the downlink). Client: B is kept in
Flower's ``context.state`` under ``LOCAL_B`` between rounds, restored over what arrives,
and never sent back.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedhar import lora_math as lm
from strategies.base import ClientSide, Rule
from strategies.fedit import FedIT, without_part

LOCAL_B = "fedsa-local-b"  # the client's own B in context.state


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
        return without_part(arrays, "B")

    def optional_keys(self) -> set[str]:
        return {k for k in self.reference_shapes or {} if lm.adapter_part(k) == "B"}

    def aggregate_states(self, states, weights, node_ids):
        return lm.fedsa_aggregate(states, weights), {}




class FedSARule(Rule):
    summary = "FedSA-LoRA: A averaged, each B stays on its client (personalised)"
    personalised = True
    server_class = FedSALoRA
    central_dp = "A and a shared head are clipped and noised; each client's B never leaves it (not released, so not covered)"

    def receive(self, state: dict, client: ClientSide) -> dict:
        if LOCAL_B in client.store:  # else: the fresh zero B (first call)
            state = {**state, **{k: v.numpy() for k, v in client.store[LOCAL_B].items()}}
        return state

    def send(self, state: dict, client: ClientSide) -> dict:
        b = {k: v for k, v in state.items() if lm.adapter_part(k) == "B"}
        client.store[LOCAL_B] = ArrayRecord(b)
        return {k: v for k, v in state.items() if k not in b}  # B never leaves the client
