"""fedhar ClientApp: a client trains only its adapters and head on the shared frozen backbone.

What travels: the trainable tensors (adapters + head, see fedhar.model.adapters), plus, from
the server, dense base updates for FedEx-LoRA / FLoRA. The frozen backbone (float32 or 4-bit)
never leaves the client. The client's partition is ``context.node_config["partition-id"]``
(set by the simulation engine, or by ``--node-config`` on a SuperNode); a SuperNode's
``data-dir`` node-config entry, if any, replaces the run's data-dir for that node (each
SuperNode reads its own copy of the data). A data directory that is missing or cannot be
read fails that client's message with a FedharError naming the directory: the server
records it as a failed client and the federation goes on.

What a client does beyond FedAvg's load-train-send is its rule's (strategies/base.py:
``prepare_model``, ``receive``, ``send``), looked up by ``--strategy``, which travels in the
run config: this module knows no rule by name. Dense base updates (``<layer>.base_delta``,
FedEx-LoRA, FLoRA) are added to the layers whatever the rule (strategies/records.py).

Local heads (head = local, or auto with clients whose label sets differ): the head is
sized to the client's own training classes, never travels (the server's arrays have no
``head.`` tensors) and is kept in ``context.state`` between rounds, like FedSA's B.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedhar.console import quiet_flower
from fedhar.errors import FedharError
from fedhar.model import trainable_state_dict
from simulations.client_cache import client_model, record_nbytes, warm
from simulations.config import FLConfig
from simulations.export import save_local_parts
from simulations.secure_aggregation import secure_mod
from simulations.task import (
    BACKBONE_KEY,
    ClientData,
    add_base_deltas,
    client_data,
    ensure_backbone,
    evaluate_local,
    federation,
    head_size,
    is_head_key,
    load_partial,
    train_local,
)
from strategies.base import ClientSide, Rule
from strategies.fedsa import LOCAL_B  # noqa: F401 (re-exported: tests read FedSA's store by this name)
from strategies.records import DELTA_SUFFIX, is_delta_key
from strategies.registry import get_rule

LOCAL_HEAD = "local-head"
DP_SGD_STEPS = "dp-sgd-steps"  # DP-SGD steps this client took in all rounds (context.state)


_nbytes = record_nbytes


def with_node_data(cfg: FLConfig, node_config) -> FLConfig:
    """``cfg`` with this node's ``data-dir`` (SuperNode ``--node-config``), which must exist."""
    data_dir = str(node_config.get("data-dir", "") or "")
    if not data_dir:
        return cfg
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        why = "is not a directory" if path.exists() else "does not exist"
        raise FedharError(f"data-dir {path} (this SuperNode's --node-config) {why}")
    return replace(cfg, data_dir=str(path))


def load_client_data(cfg: FLConfig, pid: int):
    """Client ``pid``'s data; a failure to read it names the data directory."""
    try:
        return client_data(cfg, pid)
    except Exception as e:  # a reader's error on missing or corrupt files: say where
        where = f"data-dir {cfg.data_dir}" if cfg.data_dir else "the data search path (fedhar data list)"
        raise FedharError(f"partition {pid}: could not load {cfg.data!r} from {where}: "
                          f"{type(e).__name__}: {e}") from e


def set_threads(cfg: FLConfig) -> None:
    """torch threads of this client's work (--threads; default 1: one CPU per simulated client,
    no oversubscription; 0 leaves torch's default)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


@dataclass
class ClientCall:
    """What a train / evaluate message asks of this client, before any model is touched."""

    cfg: FLConfig
    pid: int
    server_round: int
    data: ClientData
    rule: Rule
    client: ClientSide
    state: dict  # numpy arrays by name: what the client loads (after the rule's receive, local head)
    deltas: dict  # dense base updates by layer (FedEx-LoRA, FLoRA)
    received: int  # bytes of the arrays that arrived
    model_key: tuple  # client_model's arguments: the (cached) model this client trains
    mu: float = 0.0  # FedProx's proximal weight, sent in the message's config


def prepare_call(fixed: FLConfig | None, msg: Message, context: Context, numpy_of=None) -> ClientCall:
    """A message's configuration, data and arrays, the rule's ``receive`` applied and the
    local head restored: everything but loading them into a model (engines that train
    many clients at once, simulations/cohort.py, load them their own way). ``numpy_of``:
    the arrays of an ArrayRecord as numpy (read-only), if the caller converts them itself."""
    cfg = with_node_data(fixed or FLConfig.from_run_config(dict(context.run_config)), context.node_config)
    set_threads(cfg)
    pid = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    sent_backbone = str(msg.content["config"].get(BACKBONE_KEY, ""))
    if not cfg.backbone and sent_backbone and Path(sent_backbone).is_file():  # a by-hand `flwr run .`
        cfg = replace(cfg, backbone=sent_backbone)  # no pretraining windows to load and hash per message
    data = load_client_data(cfg, pid)
    fed = federation(cfg)
    local_head = fed.head == "local"
    rule = get_rule(cfg.strategy)
    client = ClientSide(cfg, pid, context.state)
    seed = cfg.seed + server_round if rule.fresh_adapters else None
    model_key = (cfg, fed.labels.size, ensure_backbone(cfg, quiet=True), pid, seed,
                 data.n_classes if local_head else None)
    arrays = msg.content["arrays"]
    incoming = numpy_of(arrays) if numpy_of else {k: v.numpy() for k, v in arrays.items()}
    deltas = {k[: -len(DELTA_SUFFIX)]: v for k, v in incoming.items() if is_delta_key(k)}
    state = {k: v for k, v in incoming.items() if not is_delta_key(k)}
    state = rule.receive(state, client)
    if local_head and LOCAL_HEAD in context.state:  # else: the fresh seeded head (first call)
        state.update({k: v.numpy() for k, v in context.state[LOCAL_HEAD].items()})
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    return ClientCall(cfg, pid, server_round, data, rule, client, state, deltas, _nbytes(arrays), model_key, mu)


def train_reply(msg: Message, context: Context, cfg: FLConfig, pid: int, data: ClientData, rule: Rule,
                client: ClientSide, trained: dict, metrics: dict, trained_seconds: float, received: int) -> Message:
    """The reply to a train message, from the client's trained tensors (``trainable_state_dict``):
    the rule's ``send``, the local head kept in ``context.state``, local parts saved, the
    injected "nan" fault."""
    state = rule.send(dict(trained), client)
    fed = federation(cfg)
    if fed.head == "local":
        head = {k: v for k, v in state.items() if is_head_key(k)}
        context.state[LOCAL_HEAD] = ArrayRecord(head)
        state = {k: v for k, v in state.items() if k not in head}  # nor does a local head
    kept = {k: v for k, v in trained.items() if k not in state}
    save_local_parts(cfg.out_dir, fed.client_names[pid], kept, list(data.labels.names) if data.labels else [])  # for fedhar evaluate
    if cfg.fault(pid, int(msg.content["config"]["server-round"])) == "nan":  # a corrupted update: rejected, not averaged
        state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    reply = ArrayRecord(state)
    metrics.update({"partition-id": pid, "seconds": trained_seconds,
                    "bytes-received": received, "bytes-sent": _nbytes(reply)})
    return Message(RecordDict({"arrays": reply, "metrics": MetricRecord(metrics)}), reply_to=msg)


def record_level_epsilon(cfg: FLConfig, context: Context, steps: int, windows: int) -> float:
    """DP-SGD's epsilon for one of this client's windows after all the steps it took in every
    round so far (counted in ``context.state``; fedhar/model/dp_sgd.py, fedhar/privacy.py)."""
    from fedhar.model.dp_sgd import sampling_rate
    from fedhar.privacy import epsilon_spent

    if DP_SGD_STEPS in context.state:
        steps += int(context.state[DP_SGD_STEPS]["steps"])
    context.state[DP_SGD_STEPS] = MetricRecord({"steps": steps})
    return epsilon_spent(cfg.dp_sgd_noise, sampling_rate(windows, cfg.batch_size), steps, cfg.dp_delta)


class InjectedFailure(RuntimeError):
    """Raised on purpose by a client named in the inject-failure config (fault tests)."""


def build_client_app(fixed: FLConfig | None = None) -> ClientApp:
    """A ClientApp; ``fixed`` replaces the run config (the in-process runner passes it)."""
    app = ClientApp()

    def setup(msg: Message, context: Context):
        call = prepare_call(fixed, msg, context)
        model = client_model(*call.model_key)  # built once per process
        load_partial(model, call.state)
        add_base_deltas(model, call.deltas)
        return call.cfg, call.pid, call.server_round, call.data, model, call.received, call.rule, call.client

    def pretraining(context: Context) -> tuple | None:
        """(cfg, pid, data) when the run pretrains the MAE itself (simulations/fed_pretrain.py)."""
        if (fixed.task if fixed else str(context.run_config.get("task", "finetune"))) != "pretrain":
            return None
        torch.set_num_threads(1)
        cfg = with_node_data(fixed or FLConfig.from_run_config(dict(context.run_config)), context.node_config)
        pid = int(context.node_config["partition-id"])
        return cfg, pid, load_client_data(cfg, pid)

    @app.train(mods=[secure_mod])  # SecAgg+ messages (--secagg) through Flower's secaggplus_mod
    def train(msg: Message, context: Context) -> Message:
        if (pre := pretraining(context)) is not None:
            from simulations.fed_pretrain import client_train

            cfg, pid, data = pre
            server_round = int(msg.content["config"]["server-round"])
            if cfg.fault(pid, server_round) == "raise":
                raise InjectedFailure(f"client {pid} fails in round {server_round} (inject-failure)")
            return client_train(msg, cfg, pid, data, corrupt=cfg.fault(pid, server_round) == "nan")
        cfg, pid, server_round, data, model, received, rule, client = setup(msg, context)
        fault = cfg.fault(pid, server_round)
        if fault == "raise":
            raise InjectedFailure(f"client {pid} fails in round {server_round} (inject-failure)")
        t0 = time.perf_counter()
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        metrics = train_local(model, data, cfg, seed=cfg.seed * 10007 + server_round * 101 + pid, proximal_mu=mu)
        trained_seconds = time.perf_counter() - t0
        if "dp-sgd-steps" in metrics:
            metrics["dp-sgd-epsilon"] = record_level_epsilon(cfg, context, metrics.pop("dp-sgd-steps"), len(data.train_y))
        # the locally trained model on the client's own test windows (drift analytics: the gap
        # between it and the global model the client evaluates after aggregation)
        metrics["local_accuracy"] = evaluate_local(model, data)["accuracy"]
        return train_reply(msg, context, cfg, pid, data, rule, client, {k: v.cpu() for k, v in trainable_state_dict(model).items()},
                           metrics,
                           trained_seconds, received)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        if (pre := pretraining(context)) is not None:
            from simulations.fed_pretrain import client_evaluate

            return client_evaluate(msg, *pre)
        _, pid, _, data, model, received, _, _ = setup(msg, context)
        metrics = evaluate_local(model, data)
        metrics.update({"partition-id": pid, "bytes-received": received})
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Which partition this node holds, so the server can sample clients reproducibly.

        The server asks every node before round 1, so the process also gets ready then: it
        loads the federation and builds its model (``client_cache.warm``), start-up work that
        would otherwise make round 1 several times as long as the others (Ray actors)."""
        pid = int(context.node_config["partition-id"])
        try:
            cfg = with_node_data(fixed or FLConfig.from_run_config(dict(context.run_config)), context.node_config)
            # no backbone path yet: a by-hand `flwr run .` pretrains, and its clients learn the path in round 1
            if cfg.backbone and cfg.task == "finetune":
                set_threads(cfg)  # as every train / evaluate call: the model is built as there
                fed = federation(cfg)
                head = head_size(fed.client_labels[pid]) if fed.head == "local" else None
                warm(cfg, fed.labels.size, ensure_backbone(cfg, quiet=True), pid, head_classes=head)
        except Exception:  # noqa: BLE001  the node's train / evaluate calls meet it again and report it
            pass
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)

    return app


quiet_flower()  # this module runs in Flower's processes too (Ray actors, SuperNodes, flwr run)
app = build_client_app()
