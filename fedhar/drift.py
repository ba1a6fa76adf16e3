"""Client drift and aggregation inexactness of federated LoRA, per round and layer (numpy only).

Inputs. ``sent``: the trainable state the server sent this round, one dict name -> array
shared by every client, or one dict per client (HetLoRA sends each node the global
truncated to its rank). ``states``: the clients' replies (only their LoRA tensors are
read). ``weights``: their example counts, normalised here to p_k. A layer is a module with
``<layer>.lora_A.<adapter>.weight`` (A: r x d_in) and ``<layer>.lora_B.<adapter>.weight``
(B: d_out x r), as in ``fedhar.lora_math``; ``<layer>.base_delta`` tensors (dense base
updates) and every other tensor are ignored.

Scaling. peft's update of a layer is (alpha / r) B A. alpha is one number for all clients
(and not known to every strategy), so it is left out: the effective update here is
U = B A / r. The *_norm columns of the "BA" part are therefore per unit of lora_alpha
(multiply by lora_alpha for weight units); rel_drift, cosine and inexactness do not depend
on alpha. Ranks may differ between clients (HetLoRA, FLoRA): U is d_out x d_in whatever r.
The "A" and "B" parts are the raw factors, unscaled.

Update of client k on a layer (part "BA"):
    delta_k = B_k A_k / r_k - B_g A_g / r_g,    (A_g, B_g) = what was sent to client k.
A factor the client did not send back is taken as sent (FedSA keeps B at home: B_g A_k;
FFA never sends A: B_k A_g); that is the server's view of the update, exact for FFA, only
the A-part of the update for FedSA. A client gets no BA row when a factor is neither sent
nor returned, or when the shapes do not multiply. ``fresh_adapters`` (FLoRA: every round
starts from new adapters with B = 0): a layer with no adapter at all in what was sent
starts from the zero product, delta_k = B_k A_k / r_k.

Parts "A" and "B": delta_k = A_k - A_g (resp. B_k - B_g), for the clients that returned
the factor. Computed for a layer only when every client that returned it was also sent it,
with the same shape, and all those shapes agree (so a mean exists); otherwise no rows for
that part and layer (e.g. heterogeneous ranks; FFA's A and FedSA's B, which never travel).
Beyond taking a missing factor as sent, nothing is filled in: a quantity that cannot be
computed has no row.

Drift: mean delta = sum_k p_k delta_k over the clients with a row for that layer and part
(p renormalised among them). Streamed in two passes (the mean first, then each client's
norms, recomputing its product), so a layer holds the mean, one client's delta and one
start product per distinct sent state (one, or one per HetLoRA rank), whatever the number
of clients; the clients' factors are read where they lie, never copied all at once.

Tables (``drift_tables``; columns in this order, ``DRIFT_COLUMNS``, ``INEXACTNESS_COLUMNS``):

drift rows (drift.csv), one per round, client, layer and part, ordered by layer, part, client:
    round         server round
    partition_id  the client's partition id (empty when unknown)
    client        the client's name (empty when unknown)
    layer         module name, e.g. encoder.blocks.0.attn.q
    part          "BA" (effective update B A / r), "A" or "B"
    update_norm   ||delta_k||_F
    drift_norm    ||delta_k - mean delta||_F
    rel_drift     drift_norm / ||mean delta||_F (0 when both are 0, inf when only the mean is)
    cosine        cos(delta_k, mean delta) in [-1, 1]; nan when either is zero

inexactness rows (inexactness.csv), one per round and layer:
    round, layer,
    clients       the number of clients aggregated
    inexactness   ||sum_k p_k B_k A_k - (sum_k p_k B_k)(sum_k p_k A_k)||_F / ||sum_k p_k B_k A_k||_F
                  (``lora_math.inexactness``: FedIT's relative error; 0 when both are 0, inf
                  when only the ideal is). Only for layers where every client returned both A
                  and B and all share one rank (the scale alpha / r then cancels).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedhar import lora_math as lm

State = Mapping[str, np.ndarray]

DRIFT_COLUMNS = ("round", "partition_id", "client", "layer", "part",
                 "update_norm", "drift_norm", "rel_drift", "cosine")
INEXACTNESS_COLUMNS = ("round", "layer", "clients", "inexactness")
DELTA_SUFFIX = ".base_delta"  # as strategies.records (dense base updates: not adapters)


def layer_factors(state: State) -> dict[str, dict[str, np.ndarray]]:
    """layer -> {"A": A, "B": B} with whichever factors ``state`` holds (either may be missing).

    Arrays are returned as they are (no copy). Two adapters on one layer is an error.
    """
    keys = lm.factor_keys(key for key in state if not key.endswith(DELTA_SUFFIX))
    return {layer: {part: state[key] for part, key in parts.items()} for layer, parts in keys.items()}


def client_drift(sent: State | Sequence[State], states: Sequence[State], weights: Sequence[float], *,
                 fresh_adapters: bool = False) -> list[dict]:
    """Drift rows without round and client identity: k (index into ``states``), layer, part,
    update_norm, drift_norm, rel_drift, cosine. See the module docstring."""
    p = lm.normalise_weights(weights)
    if len(p) != len(states):
        raise ValueError(f"need one weight per client ({len(states)}), got {len(p)}")
    sent_list = _per_client(sent, len(states))
    parsed: dict[int, dict] = {}
    given = [parsed.setdefault(id(s), layer_factors(s)) for s in sent_list]  # parse each distinct dict once
    mine = [layer_factors(s) for s in states]
    layers = list(dict.fromkeys(layer for f in mine + given for layer in f))
    rows = []
    for layer in layers:
        rows += _product_rows(layer, sent_list, given, mine, p, fresh_adapters)
        for part in ("A", "B"):
            rows += _part_rows(layer, part, given, mine, p)
    return rows


def layer_inexactness(states: Sequence[State], weights: Sequence[float]) -> list[dict]:
    """Inexactness rows without round: layer, clients, inexactness. See the module docstring."""
    p = lm.normalise_weights(weights)
    mine = [layer_factors(s) for s in states]
    rows = []
    for layer in dict.fromkeys(layer for f in mine for layer in f):
        factors = [f.get(layer, {}) for f in mine]
        if not all("A" in f and "B" in f for f in factors):
            continue
        ranks = {np.shape(f["A"])[0] for f in factors} | {np.shape(f["B"])[1] for f in factors}
        if len(ranks) != 1:
            continue
        rows.append({"layer": layer, "clients": len(states), "inexactness": _inexactness(factors, p)})
    return rows


def drift_tables(server_round: int, sent: State | Sequence[State], states: Sequence[State],
                 weights: Sequence[float], *, partition_ids: Sequence[int | None] | None = None,
                 client_names: Sequence[str | None] | None = None,
                 fresh_adapters: bool = False) -> tuple[list[dict], list[dict]]:
    """(drift rows, inexactness rows) of one round, columns ``DRIFT_COLUMNS`` and
    ``INEXACTNESS_COLUMNS``. ``partition_ids`` / ``client_names``: one per client (None: unknown)."""
    n = len(states)
    pids = list(partition_ids) if partition_ids is not None else [None] * n
    names = list(client_names) if client_names is not None else [None] * n
    if len(pids) != n or len(names) != n:
        raise ValueError(f"need one partition id and one name per client ({n})")
    drift = []
    for row in client_drift(sent, states, weights, fresh_adapters=fresh_adapters):
        k = row.pop("k")
        drift.append({"round": server_round, "partition_id": pids[k], "client": names[k], **row})
    inexact = [{"round": server_round, **row} for row in layer_inexactness(states, weights)]
    return drift, inexact


# ---- internals -----------------------------------------------------------------------------

def _per_client(sent: State | Sequence[State], n: int) -> list[State]:
    if isinstance(sent, Mapping):
        return [sent] * n
    sent = list(sent)
    if len(sent) != n:
        raise ValueError(f"need one sent state per client ({n}), got {len(sent)}")
    return sent


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _product_rows(layer, sent_list, given, mine, p, fresh_adapters) -> list[dict]:
    items = []  # (k, A, B, index of the sent dict whose product is the start, or None: zero)
    for k, (f, g) in enumerate(zip(mine, given)):
        f, g = f.get(layer, {}), g.get(layer, {})
        A, B = f.get("A", g.get("A")), f.get("B", g.get("B"))
        if A is None or B is None or np.ndim(A) != 2 or np.ndim(B) != 2 or np.shape(A)[0] != np.shape(B)[1]:
            continue
        if "A" in g and "B" in g:
            if np.shape(g["A"])[0] != np.shape(g["B"])[1] \
                    or (np.shape(g["B"])[0], np.shape(g["A"])[1]) != (np.shape(B)[0], np.shape(A)[1]):
                continue
            start = k
        elif fresh_adapters and not g:
            start = None
        else:
            continue
        items.append((k, A, B, start))
    if not items:
        return []
    starts: dict[int, np.ndarray] = {}  # one product per distinct sent dict

    def delta(i: int) -> np.ndarray:
        k, A, B, start = items[i]
        d = _f64(B) @ _f64(A)
        d *= 1.0 / np.shape(A)[0]
        if start is not None:
            key = id(sent_list[start])
            if key not in starts:
                g = given[start][layer]
                starts[key] = (_f64(g["B"]) @ _f64(g["A"])) / np.shape(g["A"])[0]
            d -= starts[key]
        return d

    return _drift_rows(layer, "BA", [k for k, *_ in items], p, delta)


def _part_rows(layer, part, given, mine, p) -> list[dict]:
    items = []  # (k, returned, sent)
    for k, (f, g) in enumerate(zip(mine, given)):
        mine_x = f.get(layer, {}).get(part)
        if mine_x is None:
            continue
        sent_x = g.get(layer, {}).get(part)
        if sent_x is None or np.shape(sent_x) != np.shape(mine_x):
            return []  # the part cannot be computed for every client that returned it
        items.append((k, mine_x, sent_x))
    if not items or len({np.shape(x) for _, x, _ in items}) != 1:
        return []
    return _drift_rows(layer, part, [k for k, *_ in items], p,
                       lambda i: _f64(items[i][1]) - _f64(items[i][2]))


def _inexactness(factors: list[dict], p: np.ndarray) -> float:
    """``lora_math.inexactness`` in one pass (it forms every product twice): equal ranks."""
    ideal = mean_a = mean_b = None
    for pk, f in zip(p, factors):
        A, B = _f64(f["A"]), _f64(f["B"])
        term = B @ A
        term *= pk
        ideal = term if ideal is None else np.add(ideal, term, out=ideal)
        mean_a = pk * A if mean_a is None else mean_a + pk * A
        mean_b = pk * B if mean_b is None else mean_b + pk * B
    if ideal is None or mean_a is None or mean_b is None:
        raise ValueError("inexactness needs at least one client's factors")
    return _ratio(_norm(ideal - mean_b @ mean_a), _norm(ideal))


def _norm(x: np.ndarray) -> float:
    flat = x.ravel()
    return float(np.sqrt(np.dot(flat, flat)))


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return num / den


def _drift_rows(layer: str, part: str, ks: list[int], p: np.ndarray,
                delta: Callable[[int], np.ndarray]) -> list[dict]:
    """Two passes over ``delta(i)`` (i-th participant): the p-weighted mean, then the norms."""
    w = p[ks] / p[ks].sum()
    mean = None
    for i, wi in enumerate(w):
        d = delta(i)
        d *= wi
        mean = d if mean is None else np.add(mean, d, out=mean)
    if mean is None:
        raise ValueError(f"{layer} {part}: drift needs at least one participant")
    mean_norm = _norm(mean)
    flat_mean = mean.ravel()
    rows = []
    for i, k in enumerate(ks):
        d = delta(i)
        update = _norm(d)
        inner = float(np.dot(d.ravel(), flat_mean))
        d -= mean
        drift = _norm(d)
        if update > 0 and mean_norm > 0:
            cosine = float(np.clip(inner / (update * mean_norm), -1.0, 1.0))
        else:
            cosine = float("nan")
        rows.append({"k": k, "layer": layer, "part": part, "update_norm": update, "drift_norm": drift,
                     "rel_drift": _ratio(drift, mean_norm), "cosine": cosine})
    return rows
