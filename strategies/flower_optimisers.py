"""Flower's own strategies as fedhar rules: FedProx and the server-side optimisers.

Each is Flower's class with reply validation (``strategies.validation.validated``). Their
clients are FedAvg's: FedProx's ``proximal-mu`` arrives in the message config and the
client adds the proximal term (``simulations.task.train_local``).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedProx, FedYogi

from strategies.base import Rule
from strategies.validation import validated


class FedProxRule(Rule):
    summary = "FedAvg + a client-side proximal term mu/2 ||w - w_global||^2 (Flower's FedProx)"
    server_class = validated(FedProx)
    any_model = True
    central_dp = "every tensor a client sends (A, B, a shared head) is clipped as one update and noised"

    def server_options(self, cfg) -> dict:
        return {"proximal_mu": cfg.proximal_mu}


class FedAvgMRule(Rule):
    summary = "Flower's FedAvgM: server momentum on the averaged update"
    server_class = validated(FedAvgM)
    any_model = True

    def server_options(self, cfg) -> dict:
        # Hsu et al. 2019: the effective server step is lr / (1 - momentum); lr = 1 - momentum
        # keeps it at FedAvg's (1), so momentum smooths the updates instead of amplifying them
        return {"server_momentum": cfg.server_momentum, "server_learning_rate": 1.0 - cfg.server_momentum}


class _ServerOptimiser(Rule):
    any_model = True

    def server_options(self, cfg) -> dict:
        return {"eta": cfg.server_lr, "eta_l": cfg.server_lr}


class FedAdamRule(_ServerOptimiser):
    summary = "Flower's FedAdam: Adam on the averaged update (step --server-lr)"
    server_class = validated(FedAdam)


class FedYogiRule(_ServerOptimiser):
    summary = "Flower's FedYogi: Yogi on the averaged update (step --server-lr)"
    server_class = validated(FedYogi)


class FedAdagradRule(_ServerOptimiser):
    summary = "Flower's FedAdagrad: Adagrad on the averaged update (step --server-lr)"
    server_class = validated(FedAdagrad)
