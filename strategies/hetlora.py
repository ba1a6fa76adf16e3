"""HetLoRA (Cho et al., EMNLP 2024): per-client ranks, zero-padded sparsity-weighted mean.

Server: ``HetLoRA``. Client: its rank is its own (``--client-ranks``); it truncates what
arrives to that rank (``lora_math.hetlora_truncate``) before loading.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MessageType, RecordDict

from fedhar import lora_math as lm
from strategies.base import ClientSide, Rule
from strategies.fedit import FedIT
from strategies.records import numpy_to_record, record_to_numpy


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



class HetLoRARule(Rule):
    summary = "HetLoRA: zero-padded, norm-weighted, per-client ranks (heterogeneous ranks)"
    server_class = HetLoRA

    def server_options(self, cfg) -> dict:
        return {"max_rank": cfg.max_rank}

    def receive(self, state: dict, client: ClientSide) -> dict:
        mine = client.rank
        if any(r > mine for r in lm.adapter_ranks(state).values()):
            state = lm.hetlora_truncate(state, mine)
        return state
