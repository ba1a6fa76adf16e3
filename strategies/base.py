"""What an aggregation rule is: one class holding its server side and its client side.

A rule lives in one module: its Flower strategy (``server_class``) and a ``Rule`` subclass
saying what the clients do. The ServerApp and ClientApp know no rule by name; they ask
the rule named by ``--strategy`` (``strategies.registry.get_rule``) through these hooks:

  server   ``server_class`` (a ``flwr.serverapp.strategy`` Message-API strategy) built with
           Flower's FedAvg keywords plus ``server_options(cfg)``
  both     ``prepare_model(model)``: what the rule freezes, on the clients and on the
           server alike (the server's initial arrays are the trainable tensors, so a tensor
           frozen here never travels)
  client   ``receive(state, client)``: what arrived (numpy, without the dense base updates,
           which every client adds to its layers) -> what the client loads;
           ``send(state, client)``: the trained state -> what travels back (keep the rest in
           ``client.store``, Flower's ``context.state``, which persists between rounds)

Two facts about a rule are attributes of its ``server_class``, read here, so each is
stated once: ``any_rank`` (clients may differ in LoRA rank: ``--client-ranks`` allowed)
and ``fresh_adapters`` (clients build new adapters every round, seeded with the round:
``cfg.seed + round``; drift is then measured from zero, not from what was sent).

Defaults are FedAvg's client: load everything that arrives, send every trainable tensor.
A third-party rule subclasses ``Rule`` in its own module and is named on the command
line as ``module:Class`` or registered under the entry-point group ``fedhar.strategies``
(README: "Add your own aggregation rule").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ClientSide:
    """What a rule's client hooks may use: the run's configuration, the client's partition
    id and its persistent store (Flower's ``context.state``, a RecordDict)."""

    cfg: Any  # simulations.config.FLConfig (not imported: strategies must not depend on the apps)
    partition_id: int
    store: Any

    @property
    def rank(self) -> int:
        """This client's LoRA rank (``--client-ranks``, else ``--rank``)."""
        return self.cfg.client_rank(self.partition_id)


class Rule:
    """One aggregation rule. Subclass it, set ``server_class`` and ``summary``; override the
    hooks whose FedAvg behaviour does not fit."""

    name: str = ""  # set by the registry: the name it was looked up by
    summary: str = ""  # one line for --help and the README's table
    server_class: type = None  # type: ignore[assignment]  # a Flower Message-API strategy
    #: its aggregate of the clients' updates is sum_k p_k s_k B_k A_k itself (fedhar/lora_math.py):
    #: no aggregation error (FFA-LoRA, FedEx-LoRA, FLoRA)
    exact: bool = False
    #: each client keeps part of the model (FedSA-LoRA's B): the clients' own test scores are
    #: those of personalised models, not of one global model
    personalised: bool = False
    #: whether the rule averages any model's tensors, not only LoRA adapters: it can then
    #: federate MAE pretraining (``fedhar fl --task pretrain``: the whole MAE travels)
    any_model: bool = False
    # central DP (strategies/dp.py) applies when the new global is, per tensor, the mean of what the clients
    # send; then this says what it protects ("" = the rule is not such a mean: refused)
    central_dp: str = ""

    @property
    def heterogeneous_ranks(self) -> bool:
        """Whether clients may have different LoRA ranks (``--client-ranks``)."""
        return bool(getattr(self.server_class, "any_rank", False))

    @property
    def averages_replies(self) -> bool:
        """Whether the new global is, tensor by tensor, the example-weighted mean of what the
        clients send (the rules ``central_dp`` describes): what central DP (strategies/dp.py)
        and secure aggregation (simulations/secure_aggregation.py) need."""
        return bool(self.central_dp)

    @property
    def fresh_adapters(self) -> bool:
        """Whether clients start every round from fresh adapters seeded with the round."""
        return bool(getattr(self.server_class, "fresh_adapters", False))

    def server_options(self, cfg) -> dict:
        """Keywords for ``server_class`` beyond Flower's FedAvg ones (from the run config)."""
        return {}

    def prepare_model(self, model) -> None:
        """Freeze what the rule never trains (clients and server alike)."""

    def receive(self, state: dict, client: ClientSide) -> dict:
        """What the server sent (numpy arrays by name) -> what the client loads; tensors left
        out keep their value in the freshly built model."""
        return state

    def send(self, state: dict, client: ClientSide) -> dict:
        """The client's trained tensors (by name) -> what travels back to the server."""
        return state
