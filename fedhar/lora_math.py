"""The mathematics of federated LoRA aggregation, as pure numpy functions.

A client's state is what ``fedhar.model.trainable_state_dict`` sends: a flat dict
name -> array. LoRA tensors are named ``<layer>.lora_A.<adapter>.weight`` (A: r x d_in)
and ``<layer>.lora_B.<adapter>.weight`` (B: d_out x r), e.g.
``encoder.blocks.0.attn.q.lora_A.default.weight``; the layer key is the prefix before
``.lora_A`` / ``.lora_B``. Every other tensor (head weights, BatchNorm running statistics)
is "other" and is averaged by example weight (FedAvg).

Notation: K clients, weights p_k (example counts normalised to sum 1), peft scaling
s_k = alpha / r_k. The effective update of a layer on client k is s_k B_k A_k, and the
ideal aggregate is sum_k p_k s_k B_k A_k. With equal ranks s is common and factors out.

- FedIT (FedAvg on A and B separately) yields mean(B) mean(A); its error is exactly
  sum_{k<j} p_k p_j (B_k - B_j)(A_k - A_j), zero when all A_k or all B_k are equal.
- FFA-LoRA: A frozen and shared, only B averaged: exact.
- FedSA-LoRA: only A averaged; each B_k stays on its client.
- FedEx-LoRA: mean(A), mean(B) plus the dense residual s (ideal - mean(B) mean(A)): exact.
- FLoRA: A_k stacked along the rank axis, p_k s_k B_k along the columns: exact, any ranks.
- HetLoRA: zero-pad to the largest rank, weight by p_k ||s_k B_k A_k||_F, truncate back
  per client: not exact.

Every function computes in float64 and returns float64; casting back to what travels
(float32, int64 BatchNorm counters) is the caller's business. Weights need not sum to 1:
they are normalised here.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

import numpy as np

State = Mapping[str, np.ndarray]

_LORA_KEY = re.compile(r"^(?P<layer>.+)\.lora_(?P<part>[AB])\.(?P<rest>[^.]+\.weight)$")


def split_adapter_key(key: str) -> tuple[str, str] | None:
    """(layer, "A" or "B") for a LoRA tensor name, None for any other tensor."""
    m = _LORA_KEY.match(key)
    return (m["layer"], m["part"]) if m else None


def adapter_part(key: str) -> str | None:
    """The part of a LoRA tensor name, "A" or "B"; None for any other tensor."""
    split = split_adapter_key(key)
    return split[1] if split else None


def factor_keys(keys) -> dict[str, dict[str, str]]:
    """layer -> {"A": name, "B": name} of the LoRA factors among ``keys`` (either may be
    missing); two adapters on one layer is an error."""
    found: dict[str, dict[str, str]] = {}
    for key in keys:
        split = split_adapter_key(key)
        if split is None:
            continue
        layer, part = split
        if part in found.setdefault(layer, {}):
            raise ValueError(f"layer {layer!r} has two lora_{part} tensors: {found[layer][part]!r}, {key!r}")
        found[layer][part] = key
    return found


def adapter_keys(state: State) -> dict[str, tuple[str, str]]:
    """layer -> (name of its A, name of its B); an A without its B (or two adapters) is an error."""
    found = factor_keys(state)
    unpaired = sorted(layer for layer, parts in found.items() if len(parts) != 2)
    if unpaired:
        raise ValueError(f"LoRA layers without both lora_A and lora_B: {unpaired[:5]}")
    return {layer: (parts["A"], parts["B"]) for layer, parts in found.items()}


def adapter_layers(state: State) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """layer -> (A, B) as float64 arrays."""
    return {layer: (_f64(state[ka]), _f64(state[kb])) for layer, (ka, kb) in adapter_keys(state).items()}


def other_keys(state: State) -> list[str]:
    """Names of the tensors that are not LoRA factors (head, BatchNorm statistics, ...)."""
    return [k for k in state if split_adapter_key(k) is None]


def normalise_weights(weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """p_k = w_k / sum w; every weight must be finite and > 0."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError("need one weight per client, at least one client")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be finite and > 0, got {w.tolist()}")
    return w / w.sum()


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _scales(scales: Sequence[float] | None, n: int) -> np.ndarray:
    if scales is None:
        return np.ones(n)
    s = np.asarray(scales, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"need one scale per client ({n}), got {s.shape}")
    return s


def _mean_of(states: Sequence[State], p: np.ndarray, keys: Collection[str]) -> dict[str, np.ndarray]:
    out = {}
    for key in keys:
        shapes = {np.shape(s[key]) for s in states}
        if len(shapes) != 1:
            raise ValueError(f"{key}: clients disagree on its shape {sorted(shapes)}")
        out[key] = sum(pk * _f64(s[key]) for pk, s in zip(p, states))
    return out


def _same_keys(states: Sequence[Collection[str]]) -> list[str]:
    """The tensor names every client has (client 0's order); ``states`` may be only their names."""
    keys = list(states[0])
    for k, s in enumerate(states[1:], start=1):
        if set(s) != set(keys):
            missing, extra = set(keys) - set(s), set(s) - set(keys)
            raise ValueError(f"client {k} has other tensors than client 0: "
                             f"missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
    return keys


def weighted_mean(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FedIT / FedAvg: every tensor (A and B separately, others too) averaged by p_k."""
    return _mean_of(states, normalise_weights(weights), _same_keys(states))


def _factors(states: Sequence[State], layer: str) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for k, state in enumerate(states):
        ka, kb = _layer_keys(state, layer, k)
        out.append((_f64(state[ka]), _f64(state[kb])))
    return out


def _layer_keys(state: State, layer: str, client: int) -> tuple[str, str]:
    """Names of ``layer``'s A and B in ``state`` (fast path: peft's default adapter)."""
    ka, kb = f"{layer}.lora_A.default.weight", f"{layer}.lora_B.default.weight"
    if ka in state and kb in state:
        return ka, kb
    try:
        return adapter_keys(state)[layer]
    except KeyError:
        raise ValueError(f"client {client} has no LoRA layer {layer!r}") from None


def ideal_product(states: Sequence[State], weights: Sequence[float] | np.ndarray, layer: str,
                  scales: Sequence[float] | None = None) -> np.ndarray:
    """sum_k p_k s_k B_k A_k (d_out x d_in): the aggregate every exact rule reproduces."""
    p, s = normalise_weights(weights), _scales(scales, len(states))
    return sum(pk * sk * (B @ A) for pk, sk, (A, B) in zip(p, s, _factors(states, layer)))


def fedit_error(states: Sequence[State], weights: Sequence[float], layer: str) -> np.ndarray:
    """ideal - mean(B) mean(A), equal scales (multiply by s for the update's units)."""
    p = normalise_weights(weights)
    factors = _factors(states, layer)
    mean_a = sum(pk * A for pk, (A, _) in zip(p, factors))
    mean_b = sum(pk * B for pk, (_, B) in zip(p, factors))
    return ideal_product(states, p, layer) - mean_b @ mean_a


def pairwise_error_formula(states: Sequence[State], weights: Sequence[float], layer: str) -> np.ndarray:
    """sum_{k<j} p_k p_j (B_k - B_j)(A_k - A_j): the closed form of ``fedit_error``."""
    p = normalise_weights(weights)
    factors = _factors(states, layer)
    A0, B0 = factors[0]
    out = np.zeros((B0.shape[0], A0.shape[1]))
    for k in range(len(factors)):
        for j in range(k + 1, len(factors)):
            (Ak, Bk), (Aj, Bj) = factors[k], factors[j]
            out += p[k] * p[j] * (Bk - Bj) @ (Ak - Aj)
    return out


def inexactness(states: Sequence[State], weights: Sequence[float], layer: str) -> float:
    """||ideal - mean(B) mean(A)||_F / ||ideal||_F: FedIT's relative error on one layer.

    0 when both are zero (e.g. every B still at its zero initialisation); inf when only
    the ideal is zero.
    """
    err = np.linalg.norm(fedit_error(states, weights, layer))
    ideal = np.linalg.norm(ideal_product(states, weights, layer))
    if ideal == 0:
        return 0.0 if err == 0 else float("inf")
    return float(err / ideal)


def fedex_residual(states: Sequence[State], weights: Sequence[float], scale: float) -> dict[str, np.ndarray]:
    """layer -> s (sum_k p_k B_k A_k - mean(B) mean(A)), dense d_out x d_in (equal ranks).

    With mean(A), mean(B) as the new adapters, ``apply_residual`` makes the model exact:
    W0 + residual + s mean(B) mean(A) = W0 + s sum_k p_k B_k A_k.
    """
    layers = adapter_keys(states[0])
    return {layer: scale * fedit_error(states, weights, layer) for layer in layers}


def apply_residual(base_weight: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """W0 + residual: what a client does with a FedEx residual or a FLoRA merged product.

    The sum must stay full precision. For an NF4 (4-bit) base the residual lives in its
    own float32 buffer whose product with the input is added to the layer's output
    (y = base4bit(x) + x @ residual.T + lora(x)); folding it into the 4-bit weights
    (dequantise, add, requantise) would round small updates away. Residuals accumulate
    over rounds, so the buffer holds their running sum, not the last one alone.
    """
    return _f64(base_weight) + _f64(residual)


def flora_stack(states: Sequence[State], weights: Sequence[float],
                scales: Sequence[float | Mapping[str, float]] | None = None,
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """layer -> (A_stack: sum r_k x d_in, B_stack: d_out x sum r_k), B blocks times p_k s_k.

    B_stack @ A_stack = sum_k p_k s_k B_k A_k exactly, whatever each client's rank.
    A client's scale is one number or layer -> scale (a client whose ranks differ by layer).
    """
    p = normalise_weights(weights)
    if scales is None:
        scales = [1.0] * len(states)
    if len(scales) != len(states):
        raise ValueError(f"need one scale per client ({len(states)}), got {len(scales)}")
    out = {}
    for layer in adapter_keys(states[0]):
        factors = _factors(states, layer)
        s = [sk[layer] if isinstance(sk, Mapping) else float(sk) for sk in scales]
        A_stack = np.concatenate([A for A, _ in factors], axis=0)
        B_stack = np.concatenate([pk * sk * B for pk, sk, (_, B) in zip(p, s, factors)], axis=1)
        out[layer] = (A_stack, B_stack)
    return out


def hetlora_aggregate(states: Sequence[State], weights: Sequence[float], max_rank: int,
                      rank_scaled: bool = True) -> dict[str, np.ndarray]:
    """HetLoRA (Cho et al., 2024): zero-pad to max_rank, sparsity-weighted average.

    Client k counts with p_k ||s_k B_k A_k||_F, normalised per layer (falls back to p_k
    when every product is zero, as at initialisation). ``rank_scaled`` (peft's
    s = alpha / r with one alpha for all clients): B_k is first multiplied by
    max_rank / r_k, so the result is a rank-max_rank adapter with scale alpha / max_rank
    whose padded blocks carry each client's effective update. Others are averaged by p_k.
    """
    p = normalise_weights(weights)
    out = _mean_of(states, p, _same_keys([{k: None for k in other_keys(s)} for s in states]))
    for layer, (ka, kb) in adapter_keys(states[0]).items():
        padded, norms = [], []
        for A, B in _factors(states, layer):
            r = A.shape[0]
            if r > max_rank:
                raise ValueError(f"{layer}: client rank {r} exceeds max_rank {max_rank}")
            if rank_scaled:
                B = B * (max_rank / r)
            norms.append(np.linalg.norm(B @ A))  # ∝ ||s_k B_k A_k||: alpha / max_rank is common
            padded.append((np.pad(A, ((0, max_rank - r), (0, 0))), np.pad(B, ((0, 0), (0, max_rank - r)))))
        w = p * np.asarray(norms)
        w = p if w.sum() == 0 else w / w.sum()
        out[ka] = sum(wk * A for wk, (A, _) in zip(w, padded))
        out[kb] = sum(wk * B for wk, (_, B) in zip(w, padded))
    return out


def hetlora_truncate(state: State, rank: int | Mapping[str, int], rank_scaled: bool = True) -> dict[str, np.ndarray]:
    """A client's share of a HetLoRA global: first ``rank`` rows of A and columns of B.

    ``rank`` is one int or layer -> rank. ``rank_scaled``: B is multiplied by r / R
    (R the global rank) so that alpha / r * B' A' equals alpha / R * B[:, :r] A[:r].
    Other tensors are copied.
    """
    out = {k: _f64(state[k]) for k in other_keys(state)}
    for layer, (ka, kb) in adapter_keys(state).items():
        A, B = _f64(state[ka]), _f64(state[kb])
        r = rank[layer] if isinstance(rank, Mapping) else int(rank)
        if not 1 <= r <= A.shape[0]:
            raise ValueError(f"{layer}: cannot truncate rank {A.shape[0]} to {r}")
        out[ka] = A[:r].copy()
        out[kb] = B[:, :r] * (r / A.shape[0] if rank_scaled else 1.0)
    return out


def ffa_aggregate(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FFA-LoRA: B and others averaged; A frozen and shared, so it must be identical.

    States may leave A out (a client that froze it does not send it). Raises ValueError
    naming the layer when two clients' A differ: they trained A, and averaging B alone
    would then be wrong.
    """
    p = normalise_weights(weights)
    shared_a: dict[str, np.ndarray] = {}
    for k, state in enumerate(states):
        for key in state:
            if adapter_part(key) != "A":
                continue
            if key not in shared_a:
                shared_a[key] = _f64(state[key])
            elif not np.array_equal(shared_a[key], _f64(state[key])):
                raise ValueError(f"FFA-LoRA: {key} differs between clients (client {k} max |diff| "
                                 f"{np.abs(shared_a[key] - _f64(state[key])).max():.3g}); A must stay frozen")
    rest = _same_keys([{k: None for k in s if k not in shared_a} for s in states])
    out = _mean_of(states, p, rest)
    out.update(shared_a)
    return out


def fedsa_aggregate(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FedSA-LoRA: A and others averaged; no B returned (each client keeps its own)."""
    keep = [{k: None for k in s if adapter_part(k) != "B"} for s in states]
    return _mean_of(states, normalise_weights(weights), _same_keys(keep))


def adapter_ranks(state: State) -> dict[str, int]:
    """layer -> rank (rows of A)."""
    return {layer: int(np.shape(state[ka])[0]) for layer, (ka, _) in adapter_keys(state).items()}


def check_update(state: State, reference_shapes: Mapping[str, tuple[int, ...]], *,
                 any_rank: bool = False, max_rank: int | None = None,
                 optional_keys: Collection[str] = ()) -> list[str]:
    """Reasons to reject a client's update; an empty list means it may be aggregated.

    Checks: missing keys (except ``optional_keys``), unexpected keys, shapes, numeric dtype,
    NaN/Inf values, and for every LoRA layer that A's rows match B's columns. With
    ``any_rank`` the rank axis of A and B may differ from the reference (heterogeneous
    ranks) but not exceed ``max_rank``.
    """
    reasons = []
    missing = sorted(set(reference_shapes) - set(state) - set(optional_keys))
    unexpected = sorted(set(state) - set(reference_shapes))
    if missing:
        reasons.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:3])}")
    if unexpected:
        reasons.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:3])}")
    for key, value in state.items():
        value = np.asarray(value)
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            reasons.append(f"{key}: non-numeric dtype {value.dtype}")
            continue
        if not np.all(np.isfinite(value)):
            n_nan, n_inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
            reasons.append(f"{key}: {n_nan} NaN and {n_inf} Inf value(s)")
        if key in reference_shapes:
            reasons += _shape_problem(key, value.shape, tuple(reference_shapes[key]), any_rank, max_rank)
    # a lone A or B is either optional or already reported as missing / unexpected
    parts: dict[str, dict[str, tuple]] = {}
    for key, value in state.items():
        split = split_adapter_key(key)
        if split:
            parts.setdefault(split[0], {})[split[1]] = np.shape(value)
    for layer, shapes in parts.items():
        a_shape, b_shape = shapes.get("A", ()), shapes.get("B", ())
        if len(a_shape) == 2 and len(b_shape) == 2 and a_shape[0] != b_shape[1]:
            reasons.append(f"{layer}: lora_A has rank {a_shape[0]} but lora_B {b_shape[1]}")
    return reasons


def _shape_problem(key, shape, expected, any_rank, max_rank) -> list[str]:
    split = split_adapter_key(key)
    if not (any_rank and split) or len(shape) != 2 or len(expected) != 2:
        return [] if shape == expected else [f"{key}: shape {shape}, expected {expected}"]
    rank_axis = 0 if split[1] == "A" else 1
    if shape[1 - rank_axis] != expected[1 - rank_axis]:
        return [f"{key}: shape {shape}, expected {expected} up to the rank"]
    if shape[rank_axis] < 1 or (max_rank is not None and shape[rank_axis] > max_rank):
        return [f"{key}: rank {shape[rank_axis]} outside 1..{max_rank}"]
    return []
