"""The cohort engine: the inline engine, with a round's LoRA clients trained and evaluated
in groups over one shared frozen backbone (``fedhar fl --engine cohort``).

``CohortGrid`` is the inline engine's ``InlineGrid`` (same contexts, message checks, error
replies, node ids, tables: simulations/inline.py) with one change: the train and
evaluate messages of one ``send_and_receive`` are not handed to the ClientApp one by one.
Each is prepared as the ClientApp prepares it (``client_app.prepare_call``: its data, the
rule's ``receive``, the local head from ``context.state``); the clients are then grouped by
model (mode, rank, head size) into cohorts of up to ``cohort_size`` and trained, or
evaluated, together by ``fedhar.model.cohort.Cohort``: stacked minibatches, the frozen
projections run once, each client's adapters and head as batched matmuls. The replies are
built by the ClientApp's own ``client_app.train_reply`` (the rule's ``send``, the local head
stored, local parts saved), so the Rule hooks, strategies and tables are those of the
inline engine. Per client: the minibatch order of ``train_local`` (its own seeded
loader), its head-dropout masks from the generator state its inline call would start
from, its own AdamW state; a client with fewer steps simply stops (masked, nothing padded).
A round's messages are prepared and run ``PREPARED_AT_ONCE`` (1,024) at a time, whole
cohorts per slice, so only a slice's client windows are in memory (10,000 clients' would be
~4 GiB); evaluation stacks the distinct adapters of a slice.

Results equal the inline engine's within float32 rounding, not bit for bit
(tests/test_cohort.py states the tolerance). What is delivered to the ClientApp instead, one
message at a time as the inline engine does, with a one-line notice the first time:
full fine-tuning, rules with fresh adapters every round or dense base updates (FLoRA,
FedEx-LoRA), FedProx's proximal term, LoRA dropout, query messages and the messages of
secure aggregation (``--secagg``: Flower's SecAgg+ mod runs in the ClientApp).

What differs from the inline engine besides speed: a message's ClientApp time is its
cohort's time shared out (``seconds`` in clients.csv is the cohort's training time / its
clients), so the timeouts apply to that share; messages are read, never copied (the
cohort never writes to them). The global torch generator is left as the last client's
inline call would leave it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log, now
from flwr.serverapp import ServerApp

from fedhar.model import classification_metrics, make_loader, trainable_state_dict
from fedhar.model.cohort import Cohort, supports
from simulations.client_app import ClientCall, InjectedFailure, prepare_call, train_reply
from simulations.client_cache import cache_key, client_model
from simulations.config import FLConfig
from simulations.inline import DEFAULT_RUN_ID, InlineGrid, InlineResult, task_identity
from simulations.messages import client_app_raised, unavailable_reply
from simulations.secure_aggregation import is_secure
from simulations.task import build_model

DEFAULT_COHORT_SIZE = 32
PREPARED_AT_ONCE = 1024  # messages prepared (their clients' windows in memory) at a time: 10,000 would be ~4 GiB
MAX_COHORT_MODELS = 4  # distinct (mode, rank, head size) cohort models kept per process


class _Member:
    """One prepared message of a cohort: its call, its context copy, and the model it would
    train inline (``key``: client_cache's) with that model's fresh tensors and generator state."""

    def __init__(self, mid: str, msg: Message, call: ClientCall, context: Context, fresh: _Fresh):
        self.mid, self.msg, self.call, self.context = mid, msg, call, context
        self.key, self.fresh, self.rng = cache_key(*call.model_key), fresh.state, fresh.rng
        self.rng_after = fresh.rng  # training draws from it (the head's dropout)
        self.epochs: list[int] = []

    def state(self) -> dict[str, torch.Tensor]:
        """What the client's model holds after loading: the fresh build, overwritten by what it received."""
        out = dict(self.fresh)
        for k, v in self.call.state.items():
            out[k] = torch.from_numpy(np.asarray(v)).to(self.fresh[k].dtype)
        return out


@dataclass
class _Fresh:
    state: dict[str, torch.Tensor]  # the trainable tensors of a fresh build (client_cache's reset model)
    rng: torch.Tensor  # the global generator's state an inline call starts training from
    why_not: str  # why this model cannot train in a cohort ("" if it can)


class CohortGrid(InlineGrid):
    """An InlineGrid that trains and evaluates LoRA clients in cohorts (module docstring)."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: Mapping | None = None, *,
                 fixed: FLConfig | None = None, cohort_size: int = DEFAULT_COHORT_SIZE, **kwargs) -> None:
        if cohort_size < 1:
            raise ValueError(f"cohort_size must be >= 1, got {cohort_size}")
        super().__init__(client_app, num_nodes, run_config, **kwargs)
        self.fixed, self.cohort_size = fixed, cohort_size
        self._models: dict[tuple, Cohort] = {}
        self._noticed: set[str] = set()
        self._fresh: dict[tuple, _Fresh] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(dict.fromkeys(self.push_messages(messages)))
        del messages
        t_start = time.monotonic()
        converted: dict[int, tuple] = {}  # id(ArrayRecord) -> (record, its arrays as numpy): strategies send one to all

        def numpy_of(record) -> dict:
            if id(record) not in converted:
                converted[id(record)] = (record, {k: v.numpy() for k, v in record.items()})
            return converted[id(record)][1]

        last: _Member | None = None
        step = self.cohort_size * max(1, PREPARED_AT_ONCE // self.cohort_size)  # whole cohorts per slice
        for first in range(0, len(ids), step):
            last = self._run_slice(ids[first:first + step], t_start, timeout, numpy_of) or last
        if last is not None:  # the global generator as the last client's inline call would leave it
            torch.set_rng_state(last.rng_after)
        return [self._replies.pop(mid) for mid in ids if mid in self._replies]

    def _run_slice(self, ids: list[str], t_start: float, timeout: float | None, numpy_of) -> _Member | None:
        """Prepare and run one slice of a round's messages (only a slice's client data is held
        at once); the replies are stored. Returns the slice's last prepared message, if any."""
        members: list[_Member] = []
        for mid in ids:
            msg = self._pending[mid]
            kind = msg.metadata.message_type
            if kind not in ("train", "evaluate") or is_secure(msg):  # SecAgg+ runs through the ClientApp's mods
                self._deliver(mid, deadline=None if timeout is None else time.monotonic() + timeout)
                continue
            member = self._prepare(mid, msg, kind, numpy_of)
            if member is not None:
                members.append(member)
        for kind in ("train", "evaluate"):
            groups: dict[tuple, list[_Member]] = {}
            for m in members:
                if m.msg.metadata.message_type == kind:
                    groups.setdefault(m.key, []).append(m)
            for group in groups.values():
                # evaluation stacks only distinct adapters (cohort_size at a time): one pass for the slice's group
                size = self.cohort_size if kind == "train" else len(group)
                for start in range(0, len(group), size):
                    cohort = group[start:start + size]
                    if self.timeout_mode == "total" and timeout is not None and time.monotonic() - t_start >= timeout:
                        self.stats[kind]["undelivered"] += len(cohort)
                        log(WARNING, "cohort engine: %d %s messages not delivered: the %.1f s timeout had passed",
                            len(cohort), kind, timeout)
                        continue
                    self._run_cohort(kind, cohort, timeout if self.timeout_mode == "per-message" else None)
        return members[-1] if members else None  # (members are in message order)

    # -- preparing ------------------------------------------------------------------------

    def _notice(self, why: str) -> None:
        if why not in self._noticed:
            self._noticed.add(why)
            log(INFO, "cohort engine: %s: these clients run one at a time (inline engine)", why)

    def _prepare(self, mid: str, msg: Message, kind: str, numpy_of) -> _Member | None:
        """The message prepared for a cohort; None when it was answered (an error, expired, or
        delivered to the ClientApp because the cohort does not cover it)."""
        if msg.metadata.created_at + msg.metadata.ttl < now().timestamp():
            self._pending.pop(mid)
            self._replies[mid] = unavailable_reply(mid, self.run_id)
            return None
        stored = self.contexts[msg.metadata.dst_node_id]
        context = Context(run_id=stored.run_id, node_id=stored.node_id,
                          node_config=copy.deepcopy(stored.node_config), state=copy.deepcopy(stored.state),
                          run_config=self.run_config, series_id=stored.series_id)
        try:
            call = prepare_call(self.fixed, msg, context, numpy_of)
            why = self._not_covered(call)
            if why:
                self._notice(why)
                self._deliver(mid, deadline=None)
                return None
            if kind == "train" and call.cfg.fault(call.pid, call.server_round) == "raise":
                raise InjectedFailure(f"client {call.pid} fails in round {call.server_round} (inject-failure)")
            fresh = self._fresh_model(call)
            member = _Member(mid, msg, call, context, fresh)
            if fresh.why_not:
                self._notice(fresh.why_not)
                self._deliver(mid, deadline=None)
                return None
        except Exception as ex:  # pylint: disable=broad-exception-caught  (as the inline engine)
            self._pending.pop(mid)
            error, logged = client_app_raised(ex)
            self._replies[mid] = self._error_reply(error, logged, msg, cause=ex)
            self.stats[kind]["calls"] += 1
            self.stats[kind]["errors"] += 1
            return None
        self._pending.pop(mid)
        return member

    @staticmethod
    def _not_covered(call: ClientCall) -> str:
        if call.cfg.client_mode(call.pid) == "full":
            return "full fine-tuning is not stacked"
        if call.rule.fresh_adapters or call.deltas:
            return f"{call.cfg.strategy} changes the frozen base or the adapters per round"
        if call.mu > 0:
            return "FedProx's proximal term is not stacked"
        if call.cfg.dp_sgd_noise > 0:
            return "DP-SGD's per-window clipping is not stacked"
        return ""

    def _fresh_model(self, call: ClientCall) -> _Fresh:
        key = cache_key(*call.model_key)
        if key not in self._fresh:
            model = client_model(*call.model_key)  # the inline call's model, reset, and its generator state
            self._fresh[key] = _Fresh(trainable_state_dict(model), torch.get_rng_state(), supports(model))
        return self._fresh[key]

    def _cohort_model(self, member: _Member) -> Cohort:
        model = self._models.get(member.key)
        if model is None:
            with torch.random.fork_rng():  # a model of the cohort's own; the generators stay as they are
                model = Cohort(build_model(*member.call.model_key))
            self._models[member.key] = model
            while len(self._models) > MAX_COHORT_MODELS:
                self._models.pop(next(iter(self._models)))
        return model

    # -- running --------------------------------------------------------------------------

    def _run_cohort(self, kind: str, cohort: list[_Member], timeout: float | None) -> None:
        t0 = time.perf_counter()
        model = self._cohort_model(cohort[0])
        try:
            if kind == "train":
                replies = self._train(model, cohort)
            else:
                replies = self._evaluate(model, cohort)
        except Exception as ex:  # pylint: disable=broad-exception-caught  every client of the cohort fails alike
            error, logged = client_app_raised(ex)
            replies = [self._error_reply(error, logged, m.msg, cause=ex) for m in cohort]
        share = (time.perf_counter() - t0) / len(cohort)
        for m, reply in zip(cohort, replies):
            self.stats[kind]["calls"] += 1
            self.stats[kind]["seconds"] += share
            if reply.has_error():
                self.stats[kind]["errors"] += 1
            else:
                self.contexts[m.msg.metadata.dst_node_id] = m.context
            if timeout is not None and share > timeout:
                self.stats[kind]["late"] += 1
                self._unanswered.add(m.mid)
                continue
            self._replies[m.mid] = reply

    def _train(self, model: Cohort, cohort: list[_Member]) -> list[Message]:
        t0 = time.perf_counter()
        schedules, generators = [], []
        for m in cohort:
            cfg, call = m.call.cfg, m.call
            loader = make_loader(call.data.train_x, call.data.train_y, cfg.batch_size, shuffle=True,
                                 seed=cfg.seed * 10007 + call.server_round * 101 + call.pid)  # train_local's
            epochs = [[(x, y) for x, y in loader if len(x) >= 2] for _ in range(cfg.local_epochs)]  # finetune_epoch skips 1
            m.epochs = [len(e) for e in epochs]
            schedules.append([b for e in epochs for b in e])
            gen = torch.Generator()
            gen.set_state(m.rng)
            generators.append(gen)
        cfg = cohort[0].call.cfg
        trained, losses = model.train([m.state() for m in cohort], schedules, generators, cfg.lr, 0.01)
        share = (time.perf_counter() - t0) / len(cohort)
        local = self._accuracies(model, cohort, trained)
        replies = []
        for m, state, client_losses, sched, gen, acc in zip(cohort, trained, losses, schedules, generators, local):
            m.rng_after = gen.get_state()
            metrics = {"train_loss": _last_epoch_loss(client_losses, sched, m.epochs),
                       "num-examples": len(m.call.data.train_y), "local_accuracy": acc["accuracy"]}
            c = m.call
            replies.append(train_reply(m.msg, m.context, c.cfg, c.pid, c.data, c.rule, c.client, state, metrics,
                                       share, c.received))
        return replies

    def _accuracies(self, model: Cohort, cohort: list[_Member], trained: list[dict] | None = None) -> list[dict]:
        """``task.evaluate_local`` of every client, its windows predicted in batched passes.
        ``trained``: the clients' states after training; else what they received, where
        clients that received the very same arrays (FedAvg's global adapters) share one state."""
        if trained is not None:
            owner, states = list(range(len(cohort))), trained
        else:
            index: dict[tuple, int] = {}
            owner = [index.setdefault(tuple((k, id(v)) for k, v in m.call.state.items()), len(index)) for m in cohort]
            first = {o: m for o, m in reversed(list(zip(owner, cohort)))}
            states = [first[o].state() for o in range(len(index))]
        windows = [torch.as_tensor(np.asarray(m.call.data.test_x), dtype=torch.float32) for m in cohort]
        preds: list[torch.Tensor] = [torch.zeros(0)] * len(cohort)
        for start in range(0, len(states), self.cohort_size):  # at most cohort_size distinct states stacked
            chunk = range(start, min(start + self.cohort_size, len(states)))
            members = [i for i, o in enumerate(owner) if o in chunk]
            flat = model.predict([states[o] for o in chunk],
                                 [torch.cat([windows[i] for i in members if owner[i] == o]) for o in chunk])
            for o, pred in zip(chunk, flat):
                mine = [i for i in members if owner[i] == o]
                for i, part in zip(mine, torch.split(pred, [len(windows[i]) for i in mine])):
                    preds[i] = part
        out = []
        for m, pred in zip(cohort, preds):
            metrics = classification_metrics(m.call.data.test_y, pred.numpy())
            out.append({"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                        "precision": metrics["macro_precision"], "recall": metrics["macro_recall"],
                        "num-examples": metrics["n"], "out-of-space": m.call.data.out_of_space})
        return out

    def _evaluate(self, model: Cohort, cohort: list[_Member]) -> list[Message]:
        replies = []
        for m, metrics in zip(cohort, self._accuracies(model, cohort)):
            metrics.update({"partition-id": m.call.pid, "bytes-received": m.call.received})
            replies.append(Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=m.msg))
        return replies


def _last_epoch_loss(losses: list[float], schedule: list, epochs: list[int]) -> float:
    """``train_local``'s train_loss: the last epoch's mean loss over its samples (NaN if none)."""
    last = epochs[-1] if epochs else 0
    steps = list(zip(losses, schedule))[len(losses) - last:] if last else []
    samples = sum(len(y) for _, (_, y) in steps)
    return sum(loss * len(y) for loss, (_, y) in steps) / samples if samples else float("nan")


def run_cohort(server_app: ServerApp, client_app: ClientApp, num_supernodes: int, run_config: Mapping | None = None,
               *, fixed: FLConfig | None = None, cohort_size: int = DEFAULT_COHORT_SIZE,
               run_id: int = DEFAULT_RUN_ID, timeout_mode: str = "per-message") -> InlineResult:
    """``inline.run_inline`` with a ``CohortGrid``."""
    grid = CohortGrid(client_app, num_supernodes, run_config, fixed=fixed, cohort_size=cohort_size,
                      run_id=run_id, timeout_mode=timeout_mode)
    context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config or {}))
    with task_identity(run_id):
        server_app(grid=grid, context=context)
    return InlineResult(context, grid)
