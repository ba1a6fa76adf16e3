"""FlexLoRA (Bai et al., NeurIPS 2024): average the full-size products, hand each client its
rank by truncated SVD. Heterogeneous ranks allowed.

Mathematics (notation of ``fedhar.lora_math``: weights p_k, scales s_k = alpha / r_k):

  aggregate     per layer, dW = sum_k p_k s_k B_k A_k (d_out x d_in, any client ranks):
                exactly the mean of the clients' effective updates;
  redistribute  dW = U S V^T (thin SVD, singular values descending); a client of rank r gets
                A = V_r^T and B = U_r S_r / s_r, so s_r B A = U_r S_r V_r^T, the best rank-r
                approximation of dW (Eckart-Young); exact when r >= rank(dW).

The split of S: all of it on B (``B = U_r S_r``, ``A = V_r^T``), as the reference's first
option. Why not sqrt(S) on both: a direction with singular value 0 would get a zero row of
A *and* a zero column of B, and LoRA's gradients through such a pair are zero for ever; with
A = V_r^T every row of A stays a unit vector, as a fresh LoRA A is a random one, and B
learns from it (at dW = 0 this is LoRA's own start: B = 0).

The server keeps the global at rank R = ``max_rank`` (the server's model, the largest
client rank). Because the singular triplets are ordered, a rank-r client's share is the
first r rows of A and columns of B, B rescaled by s_R / s_r = r / R: exactly HetLoRA's
rank-scaled truncation (``fedhar.lora_math.hetlora_truncate``), so the per-node downlink and the
client side are HetLoRA's, and a rank-r client receives the rank-r truncated SVD of the
full dW. The global model the server evaluates and saves is the rank-R truncation.

Cost: one SVD of d_out x d_in per adapted layer per round (here 192 x 192 or 192 x 768).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedhar import lora_math as lm
from strategies.hetlora import HetLoRA, HetLoRARule


def svd_factors(product: np.ndarray, rank: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(A: rank x d_in, B: d_out x rank) with scale * B @ A the best rank-``rank``
    approximation of ``product``: A = V_r^T (orthonormal rows), B = U_r S_r / scale."""
    product = np.asarray(product, dtype=np.float64)
    if not 1 <= rank <= min(product.shape):
        raise ValueError(f"rank {rank} outside 1..{min(product.shape)} for a {product.shape} product")
    U, S, Vt = np.linalg.svd(product, full_matrices=False)
    return Vt[:rank].copy(), U[:, :rank] * (S[:rank] / scale)


def flexlora_aggregate(states: Sequence[lm.State], weights: Sequence[float], rank: int,
                       scales: Sequence[float | Mapping[str, float]] | None = None,
                       global_scale: float = 1.0) -> dict[str, np.ndarray]:
    """The global state: others averaged by p_k; per layer the rank-``rank`` factors
    (``svd_factors``, scale ``global_scale``) of sum_k p_k s_k B_k A_k. A client's scale is
    one number or layer -> scale, as in ``lora_math.flora_stack``."""
    p = lm.normalise_weights(weights)
    scales = [1.0] * len(states) if scales is None else scales
    if len(scales) != len(states):
        raise ValueError(f"need one scale per client ({len(states)}), got {len(scales)}")
    out = lm.weighted_mean([{k: s[k] for k in lm.other_keys(s)} for s in states], p)
    for layer, (ka, kb) in lm.adapter_keys(states[0]).items():
        s = [sk[layer] if isinstance(sk, Mapping) else float(sk) for sk in scales]
        out[ka], out[kb] = svd_factors(lm.ideal_product(states, p, layer, s), rank, global_scale)
    return out


class FlexLoRA(HetLoRA):
    """FlexLoRA server: replies of any rank <= ``max_rank``; the global is the rank-max_rank
    SVD factorisation of the example-weighted mean of s_k B_k A_k; each known node receives
    its own rank (HetLoRA's per-node messages and rank-scaled truncation, see above).

    Client contract: as HetLoRA's (truncate what arrives to your rank, train, send adapters
    of your rank and the head); all clients use one ``lora_alpha``.
    """

    def __init__(self, *args, lora_alpha: float, max_rank: int | None = None, **kwargs):
        super().__init__(*args, max_rank=max_rank, rank_scaled=True, **kwargs)
        self.lora_alpha = float(lora_alpha)

    def aggregate_states(self, states, weights, node_ids):
        for nid, state in zip(node_ids, states):
            self.node_ranks[nid] = lm.adapter_ranks(state)
        rank = self.max_rank() or max(max(lm.adapter_ranks(s).values(), default=1) for s in states)
        scales = [{layer: self.lora_alpha / r for layer, r in lm.adapter_ranks(s).items()} for s in states]
        return flexlora_aggregate(states, weights, rank, scales, self.lora_alpha / rank), {}


class FlexLoRARule(HetLoRARule):
    summary = "FlexLoRA: mean of full products, SVD back to each client's rank (heterogeneous ranks)"
    server_class = FlexLoRA

    def server_options(self, cfg) -> dict:
        return {"lora_alpha": cfg.lora_alpha, "max_rank": cfg.max_rank}
