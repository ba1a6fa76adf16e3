"""Partitioners that turn a WindowSet into federated clients.

Each returns ``{client_id: index array}`` into the WindowSet (views, not copies, so a
thousand clients cost no more memory than one dataset). Every window lands in exactly
one client.
"""

from __future__ import annotations

import numpy as np

from fedhar.data.schema import WindowSet


def by_dataset(ws: WindowSet) -> dict[str, np.ndarray]:
    """One client per dataset (or synthetic domain)."""
    return {name: np.flatnonzero(ws.dataset == name) for name in ws.datasets()}


def by_subject(ws: WindowSet) -> dict[str, np.ndarray]:
    """One client per subject, named "dataset/subject", in the order of the names.

    Grouped by sorting once (not one pass over all windows per subject: 10,000 subjects)."""
    names, dataset = np.unique(ws.dataset, return_inverse=True)
    pairs, client = np.unique(np.stack([dataset.ravel(), ws.subject]), axis=1, return_inverse=True)
    client = client.ravel()
    rows = np.split(np.argsort(client, kind="stable"), np.cumsum(np.bincount(client, minlength=pairs.shape[1]))[:-1])
    keys = [f"{names[d]}/{s}" for d, s in pairs.T.tolist()]
    return {key: rows[k] for key, k in sorted(zip(keys, range(len(keys))))}


def dirichlet(
    ws: WindowSet, n_clients: int, alpha: float = 0.5, seed: int = 0, min_windows: int = 10
) -> dict[str, np.ndarray]:
    """Label skew: each class is spread over clients with proportions ~ Dir(alpha).

    Small alpha gives each client few classes; large alpha approaches an IID split.
    Draws again (up to 100 times) until every client holds >= min_windows windows.
    """
    if n_clients < 1 or alpha <= 0:
        raise ValueError(f"need n_clients >= 1 and alpha > 0, got {n_clients}, {alpha}")
    if n_clients * min_windows > len(ws):
        raise ValueError(
            f"{len(ws)} windows cannot give {n_clients} clients {min_windows} windows each"
        )
    rng = np.random.default_rng(seed)
    for _ in range(100):
        shards: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for label in np.unique(ws.y):
            idx = rng.permutation(np.flatnonzero(ws.y == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, alpha)))[:-1] * len(idx)).astype(int)
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].append(part)
        clients = [np.sort(np.concatenate(s)) for s in shards]
        if min(len(c) for c in clients) >= min_windows:
            return {f"client-{k:0{len(str(n_clients - 1))}d}": c for k, c in enumerate(clients)}
    raise ValueError(
        f"could not give each of {n_clients} clients >= {min_windows} windows with alpha={alpha}; "
        "use fewer clients, a larger alpha or a smaller min_windows"
    )
