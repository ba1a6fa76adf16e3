"""Masked-autoencoder pretraining of the shared backbone, cached and resumable.

A finished backbone is identified by what made it: the MAE and optimiser settings and a
fingerprint of the exact windows it saw. Asking again for the same thing returns the
existing checkpoint instead of training again; a run that was interrupted resumes from
its last finished epoch (a ``.partial.pt`` file beside the final checkpoint).

Integrity: processes asking for the same backbone at once take turns (a file lock): the
first pretrains it, the others reuse it. A cached backbone whose weights fail their
checksum, or a ``.partial.pt`` that cannot be read, is named on stderr and trained again.

Pretraining windows are z-normalised per dataset with that dataset's own statistics:
pretraining data is never the data a model is evaluated on (LODO holds it out).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedhar.data.paths import cache_root
from fedhar.data.schema import WindowSet
from fedhar.data.splits import Normaliser
from fedhar.model.checkpoint import CheckpointError, load_mae, save_mae
from fedhar.model.mae import MAEConfig, MaskedAutoencoder
from fedhar.model.training import pretrain_step


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    seed: int = 0
    model: MAEConfig = field(default_factory=MAEConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d


def warmup_cosine(total_steps: int, warmup_fraction: float = 0.1):
    """LR multiplier: linear warm-up over the first 10% of steps, then cosine decay to 0."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fingerprint(ws: WindowSet) -> str:
    """A short hash of exactly which windows (values, labels, subjects, datasets) were seen."""
    h = hashlib.sha256()
    for part in (ws.x, ws.y, ws.subject, ws.dataset.astype("<U32")):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


def backbone_dir() -> Path:
    return cache_root() / "backbones"


#: bump when the pretraining procedure changes (schedule, loss, ...): part of the checkpoint key
PROCEDURE_VERSION = 2


def checkpoint_path(windows: WindowSet, cfg: PretrainConfig, out_dir: Path | None = None) -> Path:
    key = json.dumps({"config": cfg.to_dict(), "data": fingerprint(windows), "procedure": PROCEDURE_VERSION},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    names = "+".join(windows.datasets()) if len(windows.datasets()) <= 3 else f"{len(windows.datasets())}sets"
    return (out_dir or backbone_dir()) / f"mae-{names}-{digest}.safetensors"


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def pretrain(windows: WindowSet, cfg: PretrainConfig = PretrainConfig(), out_dir: Path | None = None,
             quiet: bool = False) -> Path:
    """Pretrain an MAE on ``windows`` (raw units); returns the checkpoint path (reused if done)."""
    from fedhar.data.loading import cache_lock

    path = checkpoint_path(windows, cfg, out_dir)
    if _finished(path, quiet):
        return path
    with cache_lock(path):  # another process may be pretraining the same backbone: wait, then reuse it
        if _finished(path, quiet):
            return path
        return _pretrain(windows, cfg, path, quiet)


def _finished(path: Path, quiet: bool) -> bool:
    """Whether ``path`` is a finished, intact backbone (a damaged one is named and removed)."""
    info_path = path.with_suffix(".json")
    if not (path.exists() and info_path.exists()):
        return False
    try:
        load_mae(path)
    except CheckpointError as e:
        print(f"fedhar: {e}: pretraining it again", file=sys.stderr, flush=True)
        info_path.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        return False
    _log(f"backbone: reusing {path}", quiet)
    return True


def _pretrain(windows: WindowSet, cfg: PretrainConfig, path: Path, quiet: bool) -> Path:
    info_path = path.with_suffix(".json")
    x = torch.from_numpy(Normaliser.fit(windows).apply(windows).x)

    torch.manual_seed(cfg.seed)
    mae = MaskedAutoencoder(cfg.model)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(x) / cfg.batch_size)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.epochs * steps_per_epoch))
    partial = path.with_suffix(".partial.pt")
    start, history = 0, []
    state = _read_partial(partial)
    if state is not None:
        mae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, history = state["epoch"], state["history"]
        torch.set_rng_state(state["rng"])
        _log(f"backbone: resuming {path.name} after epoch {start}", quiet)

    _log(f"backbone: pretraining MAE on {len(x)} windows of {', '.join(windows.datasets())} "
         f"for {cfg.epochs} epochs -> {path}", quiet)
    t0 = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        losses = []
        for i in range(0, len(x), cfg.batch_size):
            losses.append(pretrain_step(mae, x[order[i:i + cfg.batch_size]], optimizer))
            schedule.step()
        history.append(float(np.mean(losses)))
        elapsed = time.perf_counter() - t0
        left = elapsed / (epoch + 1 - start) * (cfg.epochs - epoch - 1)
        _log(f"backbone: epoch {epoch + 1}/{cfg.epochs}  masked MSE {history[-1]:.4f}  "
             f"({elapsed:.0f} s, ~{left:.0f} s left)", quiet)
        tmp = partial.with_suffix(f".{os.getpid()}.tmp")
        try:
            torch.save({"model": mae.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "epoch": epoch + 1, "history": history,
                        "rng": torch.get_rng_state()}, tmp)
            os.replace(tmp, partial)
        finally:
            tmp.unlink(missing_ok=True)

    info = {"config": cfg.to_dict(), "data_fingerprint": fingerprint(windows),
            "datasets": windows.datasets(), "windows": len(windows),
            "loss_per_epoch": history, "seconds": time.perf_counter() - t0}
    save_mae(mae, path, extra={"pretrain": json.dumps(info, sort_keys=True)})
    tmp = info_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, info_path)  # the .json marks the checkpoint finished
    partial.unlink(missing_ok=True)
    return path


def random_init_backbone(cfg: PretrainConfig = PretrainConfig(), out_dir: Path | None = None) -> Path:
    """The control for every pretraining claim: the same MAE, initialised with ``cfg.seed``
    exactly as pretraining starts, and never trained."""
    model = hashlib.sha256(json.dumps(cfg.model.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    path = (out_dir or backbone_dir()) / f"mae-random-init-seed{cfg.seed}-{model}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_mae(MaskedAutoencoder(cfg.model), tmp, extra={"pretrain": json.dumps({"random_init": True, "seed": cfg.seed})})
        os.replace(tmp, path)
    return path


def _read_partial(partial: Path) -> dict | None:
    """The state of an interrupted pretraining, or None (none, or damaged: named, removed)."""
    if not partial.exists():
        return None
    try:
        return torch.load(partial, weights_only=False)
    except Exception as e:  # torch.load raises what the unpickler or zip reader hit
        print(f"fedhar: {partial}: cannot resume pretraining from it ({type(e).__name__}: {e}); "
              f"starting again", file=sys.stderr, flush=True)
        partial.unlink()
        return None


def backbone_provenance(path: Path) -> dict:
    """What a checkpoint says made it (its ``pretrain`` metadata); a damaged file is an error naming it."""
    from fedhar.model.checkpoint import read_metadata

    try:
        return json.loads(read_metadata(path).get("pretrain", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable provenance metadata ({e})") from None


def check_unseen(path: Path, dataset: str, test_subjects, strict: bool = True) -> None:
    """Refuse a backbone that saw any of ``dataset``'s ``test_subjects``: by the subjects it
    records seeing (federated pretraining, per dataset), or, with ``strict``, where it records only
    datasets, by having seen that dataset or one recorded from the same people at all."""
    from fedhar.data.registry import SAME_PEOPLE

    info = backbone_provenance(path)
    if info.get("random_init"):
        return
    people = next((g for g in SAME_PEOPLE if dataset in g), {dataset})
    if "subjects" in info:
        seen = {str(s) for d in people for s in info["subjects"].get(d, [])}
        leaked = sorted(seen & {str(s) for s in test_subjects})
        if leaked:
            raise CheckpointError(f"backbone {path}: it was pretrained on {dataset} test subject(s) "
                                  f"{', '.join(leaked[:5])}; pretrain with --server-test-fraction and the seed of this split")
        return
    datasets = set(info.get("datasets", []))
    if strict and (not datasets or datasets & people):
        raise CheckpointError(f"backbone {path}: pretrained on {sorted(datasets) or 'unknown data'}, which may "
                              f"include {dataset}'s test subjects")


def load_backbone(path: Path) -> MaskedAutoencoder:
    return load_mae(path)


# ---- one client's share of federated pretraining (simulations/fed_pretrain.py) ----------------

def train_mae(mae: MaskedAutoencoder, x: np.ndarray, epochs: int, batch_size: int, lr: float, seed: int,
              weight_decay: float = 0.05, proximal_mu: float = 0.0) -> list[float]:
    """``epochs`` passes of masked-patch reconstruction over windows ``x`` (already z-normalised),
    with a fresh AdamW; returns the mean masked MSE of each epoch.

    Everything random (the order of the windows, the masks) is drawn from one generator seeded
    with ``seed``, never from torch's global one: the same call gives the same weights in any
    process, whatever ran before (a resumed run equals an uninterrupted one). ``proximal_mu``
    > 0 adds FedProx's mu/2 ||w - w_start||^2 to the loss."""
    g = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(np.asarray(x, np.float32))
    params = [p for p in mae.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    mae.train()
    history = []
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g)
        total = 0.0
        for i in range(0, len(data), batch_size):
            batch = data[order[i:i + batch_size]]
            noise = torch.rand(len(batch), mae.config.n_patches, generator=g)
            optimizer.zero_grad(set_to_none=True)
            loss = mae(batch, noise=noise).loss
            objective = loss
            if anchors is not None:
                objective = loss + proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors))
            objective.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        history.append(total / max(1, len(data)))
    return history


@torch.no_grad()
def reconstruction_loss(mae: MaskedAutoencoder, x: np.ndarray, seed: int, batch_size: int = 512) -> float:
    """Mean masked MSE on windows ``x`` with masks drawn from ``seed``: the same masks every time
    it is called with that seed, so rounds are compared on equal terms."""
    g = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(np.asarray(x, np.float32))
    was_training = mae.training
    mae.eval()
    total = 0.0
    try:
        for i in range(0, len(data), batch_size):
            batch = data[i:i + batch_size]
            noise = torch.rand(len(batch), mae.config.n_patches, generator=g)
            total += float(mae(batch, noise=noise).loss) * len(batch)
    finally:
        mae.train(was_training)
    return total / len(data) if len(data) else float("nan")
