"""fedhar ClientApp: a client trains only its adapters and head on the shared frozen backbone.

What travels: the trainable tensors (adapters + head, see fedhar.model.adapters); the frozen
backbone (float32 or 4-bit) never leaves the client. The client's partition is
``context.node_config["partition-id"]`` (set by the simulation engine, or by
``--node-config`` on a SuperNode).
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from simulations.config import FLConfig
from simulations.task import (
    build_model,
    client_data,
    ensure_backbone,
    evaluate_local,
    federation,
    set_trainable,
    train_local,
)
from fedhar.model import trainable_state_dict


def _nbytes(record: ArrayRecord) -> int:
    return int(sum(a.numpy().nbytes for a in record.values()))


def build_client_app(fixed: FLConfig | None = None) -> ClientApp:
    """A ClientApp; ``fixed`` replaces the run config (the in-process runner passes it)."""
    app = ClientApp()

    def setup(msg: Message, context: Context):
        torch.set_num_threads(1)  # one CPU per simulated client: no oversubscription
        cfg = fixed or FLConfig.from_run_config(dict(context.run_config))
        pid = int(context.node_config["partition-id"])
        data = client_data(cfg, pid)
        model = build_model(cfg, federation(cfg).labels.size, ensure_backbone(cfg, quiet=True))
        arrays = msg.content["arrays"]
        set_trainable(model, {k: v.numpy() for k, v in arrays.items()})
        return cfg, pid, data, model, _nbytes(arrays)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg, pid, data, model, received = setup(msg, context)
        t0 = time.perf_counter()
        server_round = int(msg.content["config"]["server-round"])
        metrics = train_local(model, data, cfg, seed=cfg.seed * 10007 + server_round * 101 + pid)
        reply = ArrayRecord(trainable_state_dict(model))
        metrics.update({"partition-id": pid, "seconds": time.perf_counter() - t0,
                        "bytes-received": received, "bytes-sent": _nbytes(reply)})
        return Message(RecordDict({"arrays": reply, "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _, pid, data, model, received = setup(msg, context)
        metrics = evaluate_local(model, data)
        metrics.update({"partition-id": pid, "bytes-received": received})
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = build_client_app()
