"""Server-side aggregation of adapters: Flower's strategies, and LoRA-aware rules on top.

Names (``--strategy``):
  fedavg, fedit  FedAvg on A and B separately (FedIT)                 strategies.lora_strategies
  ffa            FFA-LoRA: A frozen and shared, only B averaged        (exact)
  fedsa          FedSA-LoRA: A averaged, each B stays on its client    (personalised)
  fedex          FedEx-LoRA: FedIT + the exact residual on the base    (exact)
  flora          FLoRA: stacked adapters merged into the base          (exact, any ranks)
  hetlora        HetLoRA: zero-padded, norm-weighted, per-client ranks (heterogeneous ranks)
  fedprox        FedAvg + a client-side proximal term (Flower's FedProx)
  fedavgm, fedadam, fedyogi, fedadagrad   Flower's server-side optimisers on the averaged update
Every strategy rejects replies with missing, misshapen or non-finite tensors (logged, never
averaged in), and logs one row per client reply (strategies.recording).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedProx, FedYogi

from strategies.lora_strategies import FedExLoRA, FedIT, FedSALoRA, FFALoRA, FLoRA, HetLoRA
from strategies.recording import RoundLog, recording
from strategies.validation import validated

STRATEGIES = {
    "fedavg": FedIT,
    "fedit": FedIT,
    "ffa": FFALoRA,
    "fedsa": FedSALoRA,
    "fedex": FedExLoRA,
    "flora": FLoRA,
    "hetlora": HetLoRA,
    "fedprox": validated(FedProx),
    "fedavgm": validated(FedAvgM),
    "fedadam": validated(FedAdam),
    "fedyogi": validated(FedYogi),
    "fedadagrad": validated(FedAdagrad),
}
#: strategies whose clients may have different LoRA ranks
HETEROGENEOUS_RANKS = ("flora", "hetlora")


def strategy_options(name: str, lora_alpha: float, max_rank: int, proximal_mu: float, server_lr: float,
                     server_momentum: float = 0.9) -> dict:
    """The strategy-specific constructor keywords fedhar passes."""
    return {
        "fedex": {"lora_alpha": lora_alpha},
        "flora": {"lora_alpha": lora_alpha},
        "hetlora": {"max_rank": max_rank},
        "fedprox": {"proximal_mu": proximal_mu},
        # Hsu et al. 2019: the effective server step is lr / (1 - momentum); lr = 1 - momentum
        # keeps it at FedAvg's (1), so momentum smooths the updates instead of amplifying them
        "fedavgm": {"server_momentum": server_momentum, "server_learning_rate": 1.0 - server_momentum},
        "fedadam": {"eta": server_lr, "eta_l": server_lr},
        "fedyogi": {"eta": server_lr, "eta_l": server_lr},
        "fedadagrad": {"eta": server_lr, "eta_l": server_lr},
    }.get(name, {})


def make_strategy(name: str, n_train: int, n_clients: int, log: RoundLog, **options):
    """A recording strategy that trains the nodes it is shown (the round loop samples them)
    and evaluates every node."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        from fedhar.errors import FedharError

        raise FedharError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    return recording(cls)(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=n_train,
        min_evaluate_nodes=n_clients,
        min_available_nodes=n_train,
        log=log,
        **options,
    )


__all__ = ["HETEROGENEOUS_RANKS", "STRATEGIES", "RoundLog", "make_strategy", "recording", "strategy_options"]
