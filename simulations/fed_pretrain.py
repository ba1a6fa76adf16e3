"""Federated MAE pretraining (``fedhar fl --task pretrain``): the backbone itself, learnt where the data is.

The same Flower app, engines, round loop (simulations/rounds.py: seeded client sampling,
failures as rows, checkpoint after every round, ``--resume``) and aggregation rules as
fine-tuning; what differs is what travels and what is trained:

  client    loads the global MAE (encoder and decoder, fedhar/model/mae.py), trains it for
            ``--local-epochs`` on all its own training windows with 75% of the patches masked
            (labels unused: ``--label-fraction`` does not apply), and sends the whole MAE back;
            evaluation is the masked MSE on its own test windows, with fixed masks
            (``fedhar.pretrain.reconstruction_loss``). Test windows, and the server's test
            subjects (``--server-test-fraction``, taken out before the clients are formed),
            never train anything.
  server    (``server_app.serve_pretraining``) starts from ``--backbone`` or, without one, the MAE initialised with ``--seed``
            exactly as ``fedhar.pretrain.random_init_backbone`` does (so the random backbone of
            that seed is this run's round 0); aggregates with any rule whose ``any_model`` is
            set (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad); writes per round the
            clients' train and test reconstruction losses and bytes moved (rounds.csv
            ``train_loss``, ``recon_loss``, ``bytes_up``, ``bytes_down``), and at the end
            ``backbone.safetensors``: an MAE checkpoint ``fedhar fl --backbone`` and
            ``fedhar lodo --backbone`` take, whose metadata ``pretrain`` (and the sidecar
            ``backbone.json``) records its provenance: rule, rounds, clients, the subjects of
            each dataset it saw, windows, bytes, losses, the configuration.

Windows are z-normalised as fine-tuning normalises them (``task.client_data``: each
dataset's statistics over all clients' training windows), so a fine-tuning run of the same
data, partition and seed feeds the backbone what it was pretrained on.

``--arm centralised`` pretrains one client holding the union of the clients' training
windows, everything else equal: the pooled-data upper bound of the same procedure.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedhar.model.checkpoint import load_mae, read_metadata, save_mae
from fedhar.model.mae import MAEConfig, MaskedAutoencoder
from fedhar.pretrain import reconstruction_loss, train_mae
from simulations.client_cache import record_nbytes
from simulations.config import FLConfig
from simulations.task import ClientData

BACKBONE_FILE = "backbone.safetensors"


def initial_mae(cfg: FLConfig) -> MaskedAutoencoder:
    """Where federated pretraining starts: ``--backbone``, or the MAE seeded with ``--seed``
    (``fedhar.pretrain.random_init_backbone``'s initialisation); the global generator is left as it was."""
    if cfg.backbone:
        return load_mae(cfg.backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return MaskedAutoencoder(MAEConfig())


@functools.lru_cache(maxsize=2)
def _shell(config_json: str) -> MaskedAutoencoder:
    """One MAE per process and shape, into which every call loads the arrays it received."""
    with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: draw nothing from the global generator
        return MaskedAutoencoder(MAEConfig.from_dict(json.loads(config_json)))


def _mae_config(cfg: FLConfig) -> str:
    return read_metadata(cfg.backbone)["config"] if cfg.backbone else json.dumps(MAEConfig().to_dict(), sort_keys=True)


def _received(cfg: FLConfig, arrays: ArrayRecord) -> MaskedAutoencoder:
    mae = _shell(_mae_config(cfg))
    mae.load_state_dict({k: torch.from_numpy(np.array(v.numpy(), np.float32)) for k, v in arrays.items()}, strict=True)
    return mae


# ---- client ----------------------------------------------------------------------------------

def client_train(msg: Message, cfg: FLConfig, pid: int, data: ClientData, corrupt: bool = False) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    arrays = msg.content["arrays"]
    mae = _received(cfg, arrays)
    t0 = time.perf_counter()
    losses = train_mae(mae, data.train_x, cfg.local_epochs, cfg.batch_size, cfg.lr,
                       seed=cfg.seed * 10007 + server_round * 101 + pid,
                       proximal_mu=float(msg.content["config"].get("proximal-mu", 0.0)))
    seconds = time.perf_counter() - t0
    state = {k: v.detach().clone() for k, v in mae.state_dict().items()}
    if corrupt:  # --inject-failure pid:round:nan: the server must reject it, not average it
        state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    reply = ArrayRecord(state)
    metrics = {"train_loss": losses[-1] if losses else float("nan"), "num-examples": len(data.train_x),
               "partition-id": pid, "seconds": seconds, "bytes-received": record_nbytes(arrays),
               "bytes-sent": record_nbytes(reply)}
    return Message(RecordDict({"arrays": reply, "metrics": MetricRecord(metrics)}), reply_to=msg)


def client_evaluate(msg: Message, cfg: FLConfig, pid: int, data: ClientData) -> Message:
    arrays = msg.content["arrays"]
    loss = reconstruction_loss(_received(cfg, arrays), data.test_x, seed=cfg.seed)
    metrics = {"recon_loss": loss, "num-examples": len(data.test_x), "partition-id": pid,
               "bytes-received": record_nbytes(arrays)}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


# ---- server (its main: simulations/server_app.py ``serve_pretraining``) --------------------------

def client_windows(fed) -> dict[str, int]:
    return {name: int(len(train)) for name, (train, _) in zip(fed.client_names, fed.splits)}


def provenance(cfg: FLConfig, fed, rounds) -> dict:
    """What made the backbone: the rule, rounds, clients, the subjects it saw (per dataset), bytes, losses."""
    from fedhar.lodo import code_version

    seen = fed.windows.labels_only().subset(np.concatenate([train for train, _ in fed.splits]))
    subjects = {d: sorted(np.unique(seen.subject[seen.dataset == d]).tolist()) for d in seen.datasets()}
    return {
        "federated": cfg.arm == "federated", "arm": cfg.arm, "rule": cfg.strategy, "rounds": cfg.rounds,
        "local_epochs": cfg.local_epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
        "fraction_train": cfg.fraction_train, "seed": cfg.seed,
        "started_from": cfg.backbone or f"random init (seed {cfg.seed})",
        "datasets": seen.datasets(), "subjects": subjects, "windows": len(seen),
        "clients": fed.client_names, "client_windows": client_windows(fed),
        "server_test_fraction": cfg.server_test_fraction,
        "bytes_up": int(rounds["bytes_up"].sum()), "bytes_down": int(rounds["bytes_down"].sum()),
        "train_loss_per_round": [float(v) for v in rounds["train_loss"]],
        "recon_loss_per_round": [float(v) for v in rounds.get("recon_loss", [])],
        "code": code_version(), "config": cfg.settings(),
    }


def save_backbone(mae: MaskedAutoencoder, out_dir: Path, info: dict) -> Path:
    """OUT_DIR/backbone.safetensors (provenance in its metadata) and its sidecar backbone.json."""
    path = Path(out_dir) / BACKBONE_FILE
    save_mae(mae, path, extra={"pretrain": json.dumps(info, sort_keys=True)})
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return path
