"""fedhar ServerApp: pretrains (or reuses) the backbone, runs the strategy, writes the tables.

Outputs in the run's out-dir: ``config.json`` (the resolved configuration, the head used,
what the server evaluates on), ``clients.csv`` (one row per client, round and phase: train
loss, accuracy, macro-F1, bytes sent and received, failures; plus the server's own
evaluations, phases "server" and "heldout", see simulations/server_eval.py),
``rounds.csv`` (aggregated per round, rewritten after every round).
"""

from __future__ import annotations

import json
from dataclasses import replace
from logging import INFO
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, Context
from flwr.common import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from fedhar.blas_threads import limited_blas_threads
from fedhar.console import quiet_flower
from fedhar.errors import FedharError
from fedhar.lodo import code_version
from fedhar.model import count_parameters, trainable_state_dict
from fedhar.pretrain import check_unseen
from simulations.config import FLConfig
from simulations.export import save_global_model
from simulations.out_dir import claim
from simulations.progress import RoundProgress
from simulations.rounds import discover_partitions, load_checkpoint, run_rounds
from simulations.secure_aggregation import SecureAggregation, describe_secure_aggregation
from simulations.server_eval import ServerEvaluator
from simulations.startup import default_out_dir
from simulations.task import build_model, data_sources, ensure_backbone, federation, is_head_key
from simulations.tracking import tracker_for
from strategies import RoundLog, get_rule, make_strategy
from strategies.dp import privacy_summary, settings_for

REPLY_COLUMNS = ("num_examples", "train_loss", "accuracy", "macro_f1", "bytes_sent", "bytes_received")


def _weighted(rows: pd.DataFrame, column: str) -> float:
    w = rows["num_examples"]
    return (rows[column] * w).sum() / w.sum() if len(rows) else float("nan")


def summarise(clients_csv: Path) -> pd.DataFrame:
    """Per round: mean train loss, example-weighted test accuracy / macro-F1, bytes moved;
    with server-side evaluation also server_* / heldout_* accuracy and macro-F1,
    example-weighted over the datasets (NaN in rounds the server did not evaluate)."""
    df = pd.read_csv(clients_csv)
    # a column only replies fill in is absent when no client ever replied
    df = df.reindex(columns=list(dict.fromkeys([*df.columns, *REPLY_COLUMNS])))
    if "partition_id" in df:  # replies arrive in any order: sum in partition order, reproducibly
        df = df.sort_values(["round", "partition_id"], kind="stable")
    ok = df[df["status"] == "ok"]
    train, evaluate = ok[ok["phase"] == "train"], ok[ok["phase"] == "evaluate"]
    server_phases = [p for p in ("server", "heldout") if (ok["phase"] == p).any()]
    rounds = sorted(df["round"].unique())
    out = []
    for r in rounds:
        t, e = train[train["round"] == r], evaluate[evaluate["round"] == r]
        w = e["num_examples"]
        out.append({
            "round": r,
            "clients_trained": len(t),
            "failed": int(((df["round"] == r) & df["status"].isin(["failed", "timeout"])).sum()),
            "rejected": int(((df["round"] == r) & (df["status"] == "rejected")).sum()),
            "offline": int(((df["round"] == r) & (df["phase"] == "train") & (df["status"] == "offline")).sum()),
            "train_loss": t["train_loss"].mean() if len(t) else float("nan"),
            "accuracy": (e["accuracy"] * w).sum() / w.sum() if e["accuracy"].notna().any() else float("nan"),
            "macro_f1": (e["macro_f1"] * w).sum() / w.sum() if e["macro_f1"].notna().any() else float("nan"),
            "acc_min": e["accuracy"].min() if len(e) else float("nan"),
            "acc_max": e["accuracy"].max() if len(e) else float("nan"),
            "acc_std": e["accuracy"].std(ddof=0) if len(e) else float("nan"),
            "bytes_up": int(t["bytes_sent"].sum()) if len(t) else 0,
            "bytes_down": int(t["bytes_received"].sum()) if len(t) else 0,
        })
        for phase in server_phases:
            rows = ok[(ok["round"] == r) & (ok["phase"] == phase)]
            out[-1][f"{phase}_accuracy"] = _weighted(rows, "accuracy")
            out[-1][f"{phase}_macro_f1"] = _weighted(rows, "macro_f1")
        if "recon_loss" in e:  # federated pretraining: masked MSE on the clients' test windows
            out[-1]["recon_loss"] = _weighted(e, "recon_loss")
        if "local_accuracy" in t:
            out[-1].update(local_global_gap(t, e))
    table = pd.DataFrame(out)
    if not len(table):
        return table
    return privacy_per_round(df, table).merge(drift_per_round(clients_csv.parent), on="round", how="left")


def privacy_per_round(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the privacy spent: central DP's aggregate rows (strategies/dp.py: epsilon
    after the round, carried over rounds with no release, delta, noise std, clip, share of
    updates clipped) and DP-SGD's largest record-level epsilon over the round's clients."""
    ok = df[df["status"] == "ok"]
    columns = ["dp_epsilon", "dp_delta", "dp_noise_std", "dp_clip", "dp_clipped"]
    if "dp_epsilon" in df:
        rows = ok[(ok["phase"] == "aggregate") & ok["dp_epsilon"].notna()]
        table = table.merge(rows[["round", *columns]].drop_duplicates("round", keep="last"), on="round", how="left")
        table[["dp_epsilon", "dp_delta"]] = table[["dp_epsilon", "dp_delta"]].ffill().fillna({"dp_epsilon": 0.0})
    if "dp_sgd_epsilon" in df:
        spent = ok[ok["phase"] == "train"].groupby("round")["dp_sgd_epsilon"].max().rename("dp_sgd_epsilon_max")
        table = table.merge(spent.reset_index(), on="round", how="left")
    return table


def local_global_gap(train: pd.DataFrame, evaluate: pd.DataFrame) -> dict:
    """Mean accuracy of the clients' locally trained models on their own test windows, and
    its mean gap to the new global model on the same windows (clients that did both)."""
    both = train[["partition_id", "local_accuracy"]].merge(
        evaluate[["partition_id", "accuracy"]], on="partition_id")
    gap = (both["local_accuracy"] - both["accuracy"]).mean() if len(both) else float("nan")
    return {"local_accuracy": train["local_accuracy"].mean(), "local_global_gap": gap}


def drift_per_round(run_dir: Path) -> pd.DataFrame:
    """Per round, from drift.csv / inexactness.csv (fedhar.drift): mean relative drift and
    cosine of the clients' effective updates B A (part BA), of A and of B alone, and the
    mean aggregation inexactness over layers. Columns absent where a strategy has no such rows
    (FedSA sends no B, FFA no A)."""
    out = pd.DataFrame({"round": pd.Series(dtype="int64")})
    if (run_dir / "drift.csv").exists() and (run_dir / "drift.csv").stat().st_size:
        drift = pd.read_csv(run_dir / "drift.csv")
        for part, suffix in (("BA", ""), ("A", "_a"), ("B", "_b")):
            rows = drift[drift["part"] == part]
            if len(rows):
                means = rows.groupby("round")[["rel_drift", "cosine"]].mean()
                means.columns = [f"drift{suffix}_mean", f"cosine{suffix}_mean"]
                out = out.merge(means.reset_index(), on="round", how="outer")
    if (run_dir / "inexactness.csv").exists() and (run_dir / "inexactness.csv").stat().st_size:
        inexact = pd.read_csv(run_dir / "inexactness.csv").groupby("round")["inexactness"].mean()
        out = out.merge(inexact.rename("inexactness_mean").reset_index(), on="round", how="outer")
    return out


def server_evaluation(strategy, evaluator: ServerEvaluator, cfg: FLConfig, log: RoundLog):
    """The round loop's hook after aggregation: evaluate the new global model on the server's data.

    What is evaluated is what the clients will receive (``downlink``: FedEx/FLoRA base
    updates included); one row per data set goes to clients.csv."""

    def after_aggregation(server_round: int, arrays: ArrayRecord) -> None:
        if not cfg.server_evaluates(server_round):
            return
        sent = arrays
        if hasattr(strategy, "downlink"):
            strategy.observe_global(arrays)
            sent = strategy.downlink(arrays)
        for row in evaluator.run(server_round, {k: v.numpy() for k, v in sent.items()}):
            log.add(row)
        log.flush()

    return after_aggregation


def build_server_app(fixed: FLConfig | None = None) -> ServerApp:
    app = ServerApp()

    # OpenBLAS on one thread for the whole ServerApp: its fork handler stops its worker threads
    # whenever any thread of this process forks, and Flower's simulation starts Ray (forking)
    # beside this thread; a BLAS call in flight then waits forever for a worker that is gone
    # (OpenBLAS#3111; a by-hand `flwr run .` from an empty cache hung so in the synthetic data's
    # complex matmul). On one thread OpenBLAS hands no work to workers.
    @app.main()
    @limited_blas_threads(1)
    def main(grid: Grid, context: Context) -> None:
        cfg = fixed or FLConfig.from_run_config(dict(context.run_config))
        if cfg.arm == "local":
            raise FedharError("arm=local aggregates nothing, so it is not a Flower run: use `fedhar fl --arm local`")
        out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir()
        claim(out_dir, cfg.resume, cfg.overwrite)  # (the runners did already; a by-hand `flwr run` not)
        if cfg.task == "pretrain":  # federated MAE pretraining (simulations/fed_pretrain.py): the same round loop
            return serve_pretraining(grid, cfg, out_dir)
        fed = federation(cfg)
        if not cfg.backbone:  # a by-hand `flwr run .`: the runners pretrain before starting (startup.py)
            log_info(f"no backbone in the run config: pretraining one on {cfg.pretrain_data} for "
                     f"{cfg.pretrain_epochs} epochs (cached for later runs; pass backbone=PATH to skip)")
        backbone = ensure_backbone(cfg)
        test = fed.server_test  # a federatedly pretrained backbone must not have seen the server's test subjects
        for name in test.datasets():
            check_unseen(backbone, name, np.unique(test.subject[test.dataset == name]), strict=False)
        cfg = replace(cfg, out_dir=str(out_dir), backbone=str(backbone))
        log_info(f"backbone {cfg.backbone}; {len(fed.parts)} clients; strategy {cfg.strategy}")
        model = build_model(cfg, fed.labels.size, Path(cfg.backbone))
        params = count_parameters(model)
        n_clients = len(fed.parts)
        n_train = cfg.clients_per_round(n_clients)
        log = RoundLog(out_dir / "clients.csv", fed.client_names)
        dp = settings_for(cfg, n_clients)
        strategy = make_strategy(cfg.strategy, n_train, n_clients, log, dp=dp,
                                 **get_rule(cfg.strategy).server_options(cfg))
        initial = trainable_state_dict(model)
        if fed.head == "local":  # local heads never travel: the global model has none
            initial = {k: v for k, v in initial.items() if not is_head_key(k)}
        evaluator = ServerEvaluator(cfg, fed, Path(cfg.backbone))
        hook = server_evaluation(strategy, evaluator, cfg, log) if evaluator.active else None
        arrays, first_round = resume_from(out_dir, cfg, ArrayRecord(initial), strategy, log, dp)
        (out_dir / "config.json").write_text(json.dumps({
            "config": cfg.settings(),
            "code": code_version(),
            "threads": torch.get_num_threads(),  # with code: what a report checks before pairing runs (fedhar.pairing)
            "data_read": data_sources(cfg),  # where each dataset was actually read from
            "clients": fed.client_names,
            "label_space": list(fed.labels.names),
            "head": fed.head,  # cfg.head resolved (auto -> shared | local)
            "client_labels": {n: list(c.names) for n, c in zip(fed.client_names, fed.client_labels)},
            "server_eval": evaluator.describe(),
            **({"few_labels": fed.few_labels} if fed.few_labels else {}),  # --label-fraction, --labelled-clients
            "privacy": {**privacy_summary(cfg, dp), "secure_aggregation": describe_secure_aggregation(cfg)},
            "trainable_parameters": params.trainable,
            "total_parameters": params.total,
        }, indent=1))
        node_of = discover_partitions(grid, n_clients, cfg.round_timeout)
        log.partition_of = {nid: pid for pid, nid in node_of.items()}
        live = RoundProgress(cfg.rounds, first_round, tracker=tracker_for(cfg, out_dir))

        def after_round(server_round: int) -> None:
            log.flush()
            table = summarise(out_dir / "clients.csv")
            write_rounds(table, out_dir)  # every round: a killed run keeps the rounds it finished
            live.update(table[table["round"] == server_round].iloc[0].to_dict())

        try:
            # SecAgg+'s weight bound: the most training windows a client holds (its num-examples)
            secure = SecureAggregation.for_run(cfg, max(len(train) for train, _ in fed.splits))
            arrays = run_rounds(strategy, grid, arrays, cfg, log, out_dir, node_of, first_round,
                                after_aggregation=hook, after_round=after_round, secure=secure)
        finally:
            live.close()
        log.flush()
        if hasattr(strategy, "downlink"):  # what the clients would receive: FedEx/FLoRA base updates too
            strategy.observe_global(arrays)
            arrays = strategy.downlink(arrays)
        save_global_model(cfg, fed, {k: v.numpy() for k, v in arrays.items()}, out_dir, cfg.rounds)
        write_rounds(summarise(out_dir / "clients.csv"), out_dir)

    return app


def write_rounds(table: pd.DataFrame, out_dir: Path) -> None:
    """rounds.csv, atomically (a reader never sees half a table)."""
    from fedhar.model.checkpoint import atomic_path

    with atomic_path(out_dir / "rounds.csv") as tmp:
        table.to_csv(tmp, index=False)


def serve_pretraining(grid: Grid, cfg: FLConfig, out_dir: Path) -> None:
    """The ServerApp's main for ``--task pretrain``: the whole MAE travels; the end is a backbone."""
    from simulations import fed_pretrain

    fed = federation(cfg)
    mae = fed_pretrain.initial_mae(cfg)
    n_clients = len(fed.parts)
    n_train = cfg.clients_per_round(n_clients)
    log = RoundLog(out_dir / "clients.csv", fed.client_names)
    strategy = make_strategy(cfg.strategy, n_train, n_clients, log, **get_rule(cfg.strategy).server_options(cfg))
    initial = ArrayRecord({k: v.detach().clone() for k, v in mae.state_dict().items()})
    arrays, first_round = resume_from(out_dir, cfg, initial, strategy, log)
    log_info(f"federated MAE pretraining: {n_clients} clients; strategy {cfg.strategy}; "
             f"from {cfg.backbone or f'a random init (seed {cfg.seed})'}")
    (out_dir / "config.json").write_text(json.dumps({
        "config": cfg.settings(), "code": code_version(), "task": "pretrain", "data_read": data_sources(cfg),
        "clients": fed.client_names, "client_windows": fed_pretrain.client_windows(fed), "mae": mae.config.to_dict(),
        "parameters": sum(p.numel() for p in mae.parameters()),
    }, indent=1))
    node_of = discover_partitions(grid, n_clients, cfg.round_timeout)
    log.partition_of = {nid: pid for pid, nid in node_of.items()}
    live = RoundProgress(cfg.rounds, first_round, tracker=tracker_for(cfg, out_dir))

    def after_round(server_round: int) -> None:
        log.flush()
        table = summarise(out_dir / "clients.csv")
        write_rounds(table, out_dir)  # every round: a killed run keeps the rounds it finished
        live.update(table[table["round"] == server_round].iloc[0].to_dict())

    try:
        arrays = run_rounds(strategy, grid, arrays, cfg, log, out_dir, node_of, first_round, after_round=after_round)
    finally:
        live.close()
    log.flush()
    table = summarise(out_dir / "clients.csv")
    write_rounds(table, out_dir)
    mae.load_state_dict({k: torch.from_numpy(v.numpy().astype("float32")) for k, v in arrays.items()})
    fed_pretrain.save_backbone(mae, out_dir, fed_pretrain.provenance(cfg, fed, table))


def resume_from(out_dir: Path, cfg: FLConfig, arrays: ArrayRecord, strategy, log: RoundLog,
                dp=None) -> tuple[ArrayRecord, int]:
    """(global arrays, first round): ``arrays`` and 1, or with ``cfg.resume`` the checkpoint's
    arrays, strategy state and log rows, and the round after it. ``dp``: the run's central DP
    mechanism, which must be the checkpoint's."""
    if not cfg.resume:
        return arrays, 1
    saved = load_checkpoint(out_dir, cfg)
    if saved is None:  # (claim() checked: no earlier tables either)
        log_info(f"resume: nothing to resume in {out_dir}, starting at round 1")
        return arrays, 1
    if dp is not None and saved["strategy_state"].get("dp") != dp:  # (--rounds re-calibrates the noise)
        raise FedharError(f"{out_dir}: cannot resume: the DP mechanism differs from the checkpoint's "
                          f"({saved['strategy_state'].get('dp')}); keep --rounds and every --dp-* option")
    vars(strategy).update(saved["strategy_state"])
    log.rows = saved["log_rows"]
    log_info(f"resume: continuing after round {saved['round']} from {out_dir / 'checkpoint.pkl'}")
    return ArrayRecord({k: torch.from_numpy(v) for k, v in saved["arrays"].items()}), saved["round"] + 1


def log_info(message: str) -> None:
    flwr_log(INFO, message)


quiet_flower()  # this module runs in Flower's processes too (Ray actors, SuperNodes, flwr run)
app = build_server_app()
