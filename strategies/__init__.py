"""Server-side aggregation of adapters: Flower's strategies, and LoRA-aware rules on top."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi

from strategies.recording import RoundLog, recording

# name -> Flower strategy. FedAvg on the adapter tensors is FedIT (A and B averaged
# separately). Server-side optimisers (FedAvgM, FedAdam, FedYogi, FedAdagrad) treat the
# averaged update as a pseudo-gradient.
STRATEGIES = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
}


def make_strategy(name: str, n_clients: int, fraction_train: float, log: RoundLog, **kwargs):
    """A recording strategy that samples fraction_train of n_clients per round and evaluates all."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        from fedhar.errors import FedharError

        raise FedharError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    n_train = max(1, int(round(fraction_train * n_clients)))
    return recording(cls)(
        fraction_train=fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=n_train,
        min_evaluate_nodes=n_clients,
        min_available_nodes=n_clients,
        log=log,
        **kwargs,
    )


__all__ = ["STRATEGIES", "RoundLog", "make_strategy", "recording"]
