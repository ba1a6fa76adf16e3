"""fedhar ClientApp: a client trains only its adapters and head on the shared frozen backbone.

What travels: the trainable tensors (adapters + head, see fedhar.model.adapters), plus, from
the server, dense base updates for FedEx-LoRA / FLoRA. The frozen backbone (float32 or 4-bit)
never leaves the client. The client's partition is ``context.node_config["partition-id"]``
(set by the simulation engine, or by ``--node-config`` on a SuperNode); a SuperNode's
``data-dir`` node-config entry, if any, replaces the run's data-dir for that node (each
SuperNode reads its own copy of the data). A data directory that is missing or cannot be
read fails that client's message with a FedharError naming the directory: the server
records it as a failed client and the federation goes on.

Per-strategy client behaviour (the server side is in strategies/lora_strategies.py):
  ffa      A is frozen at its seeded init, identical on every client; only B and the head travel
  fedsa    B stays on the client (kept in context.state); A and the head are averaged
  fedex    the residual sum_k p_k B_k A_k - mean(B) mean(A) arrives as a dense base update
  flora    fresh adapters every round; the stacked product arrives as a dense base update
  hetlora  each client has its own rank; it truncates what the server sends to it
  fedprox  a proximal term mu/2 ||w - w_global||^2 on the trainable tensors

Local heads (head = local, or auto with clients whose label sets differ): the head is
sized to the client's own training classes, never travels (the server's arrays have no
``head.`` tensors) and is kept in ``context.state`` between rounds, like FedSA's B.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedhar.console import quiet_flower
from fedhar.errors import FedharError
from fedhar.model import trainable_state_dict
from simulations.client_cache import client_model, record_nbytes
from simulations.config import FLConfig
from simulations.export import save_local_parts
from simulations.task import (
    add_base_deltas,
    client_data,
    ensure_backbone,
    evaluate_local,
    federation,
    is_head_key,
    load_partial,
    train_local,
)
from strategies.lora_math import adapter_part, adapter_ranks, hetlora_truncate
from strategies.lora_strategies import DELTA_SUFFIX, is_delta_key

LOCAL_B = "fedsa-local-b"
LOCAL_HEAD = "local-head"


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


class InjectedFailure(RuntimeError):
    """Raised on purpose by a client named in the inject-failure config (fault tests)."""


def build_client_app(fixed: FLConfig | None = None) -> ClientApp:
    """A ClientApp; ``fixed`` replaces the run config (the in-process runner passes it)."""
    app = ClientApp()

    def setup(msg: Message, context: Context):
        torch.set_num_threads(1)  # one CPU per simulated client: no oversubscription
        cfg = with_node_data(fixed or FLConfig.from_run_config(dict(context.run_config)), context.node_config)
        pid = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        data = load_client_data(cfg, pid)
        fed = federation(cfg)
        local_head = fed.head == "local"
        seed = cfg.seed + server_round if cfg.strategy == "flora" else None  # FLoRA: fresh adapters
        model = client_model(cfg, fed.labels.size, ensure_backbone(cfg, quiet=True), pid, seed,
                             head_classes=data.n_classes if local_head else None)  # built once per process
        arrays = msg.content["arrays"]
        incoming = {k: v.numpy() for k, v in arrays.items()}
        deltas = {k[: -len(DELTA_SUFFIX)]: v for k, v in incoming.items() if is_delta_key(k)}
        state = {k: v for k, v in incoming.items() if not is_delta_key(k)}
        if cfg.strategy == "hetlora":
            mine = cfg.client_rank(pid)
            if any(r > mine for r in adapter_ranks(state).values()):
                state = hetlora_truncate(state, mine)
        if cfg.strategy == "fedsa" and LOCAL_B in context.state:
            state.update({k: v.numpy() for k, v in context.state[LOCAL_B].items()})
        if local_head and LOCAL_HEAD in context.state:  # else: the fresh seeded head (first call)
            state.update({k: v.numpy() for k, v in context.state[LOCAL_HEAD].items()})
        load_partial(model, state)
        add_base_deltas(model, deltas)
        return cfg, pid, server_round, data, model, _nbytes(arrays)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg, pid, server_round, data, model, received = setup(msg, context)
        fault = cfg.fault(pid, server_round)
        if fault == "raise":
            raise InjectedFailure(f"client {pid} fails in round {server_round} (inject-failure)")
        t0 = time.perf_counter()
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        metrics = train_local(model, data, cfg, seed=cfg.seed * 10007 + server_round * 101 + pid, proximal_mu=mu)
        trained_seconds = time.perf_counter() - t0
        # the locally trained model on the client's own test windows (drift analytics: the gap
        # between it and the global model the client evaluates after aggregation)
        metrics["local_accuracy"] = evaluate_local(model, data)["accuracy"]
        state = trainable_state_dict(model)
        if cfg.strategy == "fedsa":
            b = {k: v for k, v in state.items() if adapter_part(k) == "B"}
            context.state[LOCAL_B] = ArrayRecord(b)
            state = {k: v for k, v in state.items() if k not in b}  # B never leaves the client
        fed = federation(cfg)
        if fed.head == "local":
            head = {k: v for k, v in state.items() if is_head_key(k)}
            context.state[LOCAL_HEAD] = ArrayRecord(head)
            state = {k: v for k, v in state.items() if k not in head}  # nor does a local head
        kept = {k: v for k, v in trainable_state_dict(model).items() if k not in state}
        save_local_parts(cfg.out_dir, fed.client_names[pid], kept, list(data.labels.names) if data.labels else [])  # for fedhar evaluate
        if fault == "nan":  # a corrupted update: the server must reject it, not average it
            state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
        reply = ArrayRecord(state)
        metrics.update({"partition-id": pid, "seconds": trained_seconds,
                        "bytes-received": received, "bytes-sent": _nbytes(reply)})
        return Message(RecordDict({"arrays": reply, "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _, pid, _, data, model, received = setup(msg, context)
        metrics = evaluate_local(model, data)
        metrics.update({"partition-id": pid, "bytes-received": received})
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Which partition this node holds, so the server can sample clients reproducibly."""
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)

    return app


quiet_flower()  # this module runs in Flower's processes too (Ray actors, SuperNodes, flwr run)
app = build_client_app()
