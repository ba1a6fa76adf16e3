"""The inline engine: a Flower ``Grid`` that runs the real ClientApp in this process, one
message after the other. No Ray, no threads, no subprocesses.

``fedhar fl --engine inline`` (``run_inprocess(cfg, engine="inline")``) uses it instead of
``flwr.simulation.run_simulation``, which starts a local Ray instance (about 10 s) and
cannot run inside a Ray task. Here a whole federation is a plain function call, so a sweep
can run one trial per Ray task, and a run is deterministic.

What it does as Flower's simulation engine does (flwr 1.41: ``InMemoryGrid`` +
``server/superlink/fleet/vce``):

* one ``Context`` per node, created when the run starts, with node_config
  ``{"partition-id": pid, "num-partitions": n}`` and an empty ``state``; ``state`` is kept
  from call to call (so per-client memory such as FedSA's local B persists between
  rounds). As in Flower, a ClientApp call works on a copy of the context, and the copy is
  kept only when the call returns: a call that raises leaves the node's context as it was,
  and one that changes ``run_config`` is answered with an error (Flower's
  ``update_context`` check);
* the ClientApp receives a copy of the message (Flower's messages travel serialised), so a
  ClientApp cannot change what the server or other clients see;
* a ClientApp exception becomes the error reply Flower's worker builds: code
  ``CLIENT_APP_RAISED_EXCEPTION`` and reason ``str(type(e)) + ":<'" + str(e) + "'>"`` of
  ``e = ClientAppException(str(exception))`` (``messages.client_app_raised``),
  logged with its traceback; the run goes on. Only ``Exception`` is caught, as in Flower;
* messages are checked as the in-memory LinkState checks them: an invalid message or one
  for an unknown node is logged and not sent (no id returned); a reply that does not
  answer its message is logged and dropped; pulling an unknown or already pulled message
  id gives Flower's ``MESSAGE_UNAVAILABLE`` error reply; a message whose TTL ran out before
  it was delivered is answered with that error too;
* ``send_and_receive(messages, timeout=...)`` returns only replies that arrived in time.

What differs, and what it cannot do:

* Node ids are fixed: node ``NODE_ID_OFFSET + pid`` for partition pid (Flower draws random
  64-bit ids), the run id is ``DEFAULT_RUN_ID``, and a message's id is the hash of its
  metadata, ``messages.message_id`` (Flower's simulation: uuid4). The order of replies is
  the order of the messages.
* Clients run one after the other, so a round takes the sum of the clients' times, not
  the longest one (Flower runs as many at once as its actors allow).
* Timeouts. A ClientApp call cannot be interrupted: a call that hangs hangs the run, and
  a slow call runs to the end. Two ways to apply ``timeout`` (``timeout_mode``):
  ``"per-message"`` (the default) drops a reply when its own ClientApp call took longer
  than ``timeout``: what Flower returns with one actor per client, where all clients
  start together. ``"total"`` applies Flower's rule to this process's clock (replies that
  arrive after ``timeout`` seconds from the call are dropped), which, with clients in
  sequence, times out the clients late in the queue. In both, messages not yet delivered
  when the deadline has passed are never delivered (Flower would still run them in the
  background and they would compete with the next round). As in Flower, a late call's
  change to its node's ``context.state`` is kept; its reply is discarded (Flower keeps it
  in the LinkState, where a later ``pull_messages`` of that id could still fetch it).
* Everything shares one process with the ServerApp: global state a ClientApp changes (e.g.
  ``torch.set_num_threads``, module caches, random generators) is the server's and the
  next client's too. Flower's actors are processes of their own (reused by many clients,
  so their globals leak from client to client, but not into the server). A client that
  crashes the process (segfault, out of memory) ends the run.
* ``timeout`` bounds a round only between calls; ``pull_messages`` delivers every pending
  message it is asked about, with no deadline.

Public Flower APIs only (issue 11). Flower 1.41's one public way to run a ServerApp with
ClientApps in one program is ``flwr.simulation.run_simulation``, whose only backend is Ray
(the ``ray`` engine of ``fedhar fl``): about 10 s to start, and it cannot run inside a Ray
task (a sweep trial). So this module implements the public ``flwr.serverapp.Grid`` with the
public Message API (``flwr.app``), and does what Flower's LinkState and workers do to
messages with the public pieces of simulations/messages.py (ids, error replies and their
reasons, the LinkState's checks, the node-config keys), each compared with Flower's own
original in tests/test_flower_messages.py. What that changes: a message's id is the hash
of its metadata (``messages.message_id``) and sits on the grid's copy of the message, not
on the caller's object (``Metadata`` has no public setter; ``rounds.exchange`` computes it);
``grid.run`` is the ``Run`` given to ``set_run`` (``Run`` is not public), ``run_id`` the
run's id. One non-public piece is left, in ``task_identity``: Flower's ``Message``
constructor takes the ServerApp's run id and node from
``flwr.supercore.task_identity.TaskIdentity``, which no public API sets.
tests/test_fl_inline.py pins each behaviour against Flower's engine, and
tests/test_flower_public_api.py keeps fedhar's imports of Flower public.

Memory: per node only its ``Context`` (node_config, ``state``; ``run_config`` is one dict
shared by all nodes). Messages are held only between push and pull; a model exists only
while a ClientApp call builds it.
"""

from __future__ import annotations

import copy
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from logging import ERROR, WARNING

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log, now
from flwr.serverapp import Grid, ServerApp

from simulations.messages import (
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    SUPERLINK_NODE_ID,
    ErrorCode,
    client_app_raised,
    problems,
    unavailable_reply,
    with_id,
    worker_reason,
)

NODE_ID_OFFSET = 1_000_000  # node id of partition pid: NODE_ID_OFFSET + pid
DEFAULT_RUN_ID = 1
TIMEOUT_MODES = ("per-message", "total")


def node_id_of(partition_id: int) -> int:
    return NODE_ID_OFFSET + partition_id


class InlineGrid(Grid):
    """A Grid whose nodes are ``num_nodes`` ClientApp instances called in this process.

    ``stats`` counts, per message type, the ClientApp calls (``calls``), their seconds
    (``seconds``), error replies (``errors``), replies dropped as late (``late``) and
    messages never delivered because the deadline had passed (``undelivered``).
    """

    delivers_in_this_thread = True  # the round loop keeps this grid's own timeout rules

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: Mapping | None = None, *,
                 run_id: int = DEFAULT_RUN_ID, timeout_mode: str = "per-message") -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        if timeout_mode not in TIMEOUT_MODES:
            raise ValueError(f"timeout_mode must be one of {TIMEOUT_MODES}, got {timeout_mode!r}")
        self.client_app = client_app
        self.num_nodes = num_nodes
        self.timeout_mode = timeout_mode
        self.run_config = dict(run_config or {})  # shared by every node's Context; calls get copies
        self.run_id = run_id
        self._run = None  # the Run given to set_run, if any
        self._pending: dict[str, Message] = {}  # message id -> instruction, in push order
        self._replies: dict[str, Message] = {}  # instruction id -> reply not yet pulled
        self._unanswered: set[str] = set()  # delivered, reply dropped: pulling them gives nothing
        self.stats: dict[str, dict[str, float]] = defaultdict(
            lambda: {"calls": 0, "seconds": 0.0, "errors": 0, "late": 0, "undelivered": 0})
        self.contexts = self._fresh_contexts()

    def _fresh_contexts(self) -> dict[int, Context]:
        return {
            node_id_of(pid): Context(
                run_id=self.run_id,
                node_id=node_id_of(pid),
                node_config={PARTITION_ID_KEY: pid, NUM_PARTITIONS_KEY: self.num_nodes},
                state=RecordDict(),
                run_config=self.run_config,
            )
            for pid in range(self.num_nodes)
        }

    # -- the Grid interface ---------------------------------------------------------------

    def set_run(self, run) -> None:
        """Operate in ``run`` (the Flower ``Run`` a runtime passes); a different run id starts
        every node with a fresh Context."""
        if not isinstance(getattr(run, "run_id", None), int):
            raise TypeError(f"`run` must be a Flower Run, got {type(run).__name__}")
        new_id = run.run_id != self.run_id
        self._run, self.run_id = copy.copy(run), run.run_id
        if new_id:
            self._pending.clear()
            self._replies.clear()
            self._unanswered.clear()
            self.contexts = self._fresh_contexts()

    @property
    def run(self):
        """A copy of the Run given to ``set_run``. Flower's ``Run`` class is not public, so a
        grid given none has none to return (as Flower's own grids): ``run_id`` is the run's id."""
        if self._run is None:
            raise RuntimeError(f"InlineGrid.run: no Run was set (set_run); the run id is {self.run_id}")
        return copy.copy(self._run)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        """Deprecated in Flower (use the ``Message`` constructor); kept for the interface."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Store each valid message under its id (``messages.message_id``) and return the
        ids. The id goes on the grid's copy of the message (``Metadata`` has no public
        setter); the caller finds it with ``messages.message_id(msg)``."""
        ids: list[str] = []
        for msg in messages:
            stored = with_id(msg)
            mid = stored.metadata.message_id
            found = problems(stored, is_reply=False)
            if msg.metadata.run_id != self.run_id:
                found.append(f"run id {msg.metadata.run_id} is not this run's ({self.run_id})")
            if msg.metadata.dst_node_id not in self.contexts:
                found.append(f"invalid destination node id {msg.metadata.dst_node_id}")
            if mid in self._pending and not (msg.has_content() and self._pending[mid].content is msg.content):
                found.append("a pending message has the same id (the same metadata)")
            if found:
                log(ERROR, "inline engine: message not sent: %s", "; ".join(found))
                continue
            self._pending.setdefault(mid, stored)  # pushed again while pending: stored once, as the LinkState does
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Deliver the pending messages among ``message_ids`` (no deadline), then return the
        replies not yet pulled; an id neither pending nor answered gets Flower's
        MESSAGE_UNAVAILABLE error reply."""
        wanted = list(dict.fromkeys(message_ids))
        for mid in wanted:
            if mid in self._pending:
                self._deliver(mid, deadline=None)
        out = []
        for mid in wanted:
            if mid in self._replies:
                out.append(self._replies.pop(mid))
            elif mid not in self._unanswered:
                out.append(unavailable_reply(mid, self.run_id))
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(dict.fromkeys(self.push_messages(messages)))
        del messages
        deadline = None if timeout is None else time.monotonic() + timeout
        for k, mid in enumerate(ids):
            if self.timeout_mode == "total" and deadline is not None and time.monotonic() >= deadline:
                for late in ids[k:]:
                    msg = self._pending.pop(late)
                    self.stats[msg.metadata.message_type]["undelivered"] += 1
                log(WARNING, "inline engine: %d of %d messages not delivered: the %.1f s timeout had passed",
                    len(ids) - k, len(ids), timeout)
                break
            if self.timeout_mode == "per-message" and timeout is not None:
                self._deliver(mid, deadline=time.monotonic() + timeout)
            else:
                self._deliver(mid, deadline=deadline)
        return [self._replies.pop(mid) for mid in ids if mid in self._replies]

    # -- delivery -------------------------------------------------------------------------

    def _deliver(self, mid: str, deadline: float | None) -> None:
        """Run the ClientApp on pending message ``mid``; store its reply unless it is late."""
        msg = self._pending.pop(mid)
        kind = msg.metadata.message_type
        if msg.metadata.created_at + msg.metadata.ttl < now().timestamp():
            self._replies[mid] = unavailable_reply(mid, self.run_id)
            return
        node_id = msg.metadata.dst_node_id
        stored = self.contexts[node_id]
        context = Context(run_id=stored.run_id, node_id=stored.node_id,
                          node_config=copy.deepcopy(stored.node_config), state=copy.deepcopy(stored.state),
                          run_config=copy.deepcopy(stored.run_config), series_id=stored.series_id)
        delivered = Message(content=copy.deepcopy(msg.content), metadata=copy.deepcopy(msg.metadata))
        delivered.metadata.delivered_at = now().isoformat()
        t0 = time.perf_counter()
        try:
            reply = self.client_app(message=delivered, context=context)
        except Exception as ex:  # pylint: disable=broad-exception-caught  (as flwr's vce worker)
            # the Ray actor wraps what the ClientApp raised (ray_actor.VirtualClientEngineActor.run)
            error, logged = client_app_raised(ex)
            reply = self._error_reply(error, logged, msg, cause=ex)
        else:
            if context.run_config != self.run_config:  # DeprecatedRunInfoStore.update_context
                refused = ValueError("The `run_config` field of the `Context` object cannot be modified "
                                     f"(run_id: {msg.metadata.run_id}).")
                reply = self._error_reply(Error(ErrorCode.UNKNOWN, worker_reason(refused)), refused, msg, cause=refused)
            else:
                context.run_config = self.run_config
                self.contexts[node_id] = context
        seconds = time.perf_counter() - t0
        self.stats[kind]["calls"] += 1
        self.stats[kind]["seconds"] += seconds
        if isinstance(reply, Message) and reply.has_error():
            self.stats[kind]["errors"] += 1
        self._unanswered.add(mid)  # until a valid reply is stored below
        if deadline is not None and time.monotonic() > deadline:
            self.stats[kind]["late"] += 1
            log(WARNING, "inline engine: node %d answered %s after the timeout (%.1f s): reply dropped",
                node_id, kind, seconds)
            return
        if not isinstance(reply, Message):
            log(ERROR, "inline engine: the ClientApp returned %s, not a Message: no reply", type(reply).__name__)
            return
        reply = with_id(reply)  # as the SuperNode gives a reply its id
        found = problems(reply, is_reply=True)
        if reply.metadata.reply_to_message_id != mid or reply.metadata.src_node_id != node_id:
            found.append("the reply does not answer the message it was given")
        if found:
            log(ERROR, "inline engine: reply from node %d dropped: %s", node_id, "; ".join(found))
            return
        self._unanswered.discard(mid)
        self._replies[mid] = reply

    @staticmethod
    def _error_reply(error: Error, logged: object, msg: Message, cause: BaseException) -> Message:
        """The error reply flwr's vce worker (vce_api.worker) sends, logged as it logs it:
        ``logged``, then the traceback of ``cause`` (the ClientApp's own exception)."""
        log(ERROR, logged)
        log(ERROR, "".join(traceback.format_exception(cause)))
        return Message(error, reply_to=msg)


@dataclass
class InlineResult:
    context: Context  # the ServerApp's context after the run
    grid: InlineGrid


@contextmanager
def task_identity(run_id: int) -> Iterator[None]:
    """Set the identity Flower's ``Message`` constructor stamps on the ServerApp's messages
    (their run id and source node), as ``run_simulation`` sets it, and restore it afterwards.

    fedhar's one use of a non-public Flower module. ``Message(content, dst_node_id,
    message_type)`` reads ``TaskIdentity`` and raises while it is unset; only Flower's own
    runtimes (``run_simulation``, ``flwr run``'s processes) set it, and no public API does.
    tests/test_flower_public_api.py allows this import here and nowhere else."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)  # pylint: disable=W0212
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved  # pylint: disable=W0212


def run_inline(server_app: ServerApp, client_app: ClientApp, num_supernodes: int, run_config: Mapping | None = None,
               *, run_id: int = DEFAULT_RUN_ID, timeout_mode: str = "per-message") -> InlineResult:
    """Run ``server_app`` against ``num_supernodes`` nodes of ``client_app``, in this process.

    The ServerApp's Context has node id 0, an empty node_config and state, and
    ``run_config`` (as ``run_simulation`` builds it); every node's Context has the same
    run_config. Exceptions of the ServerApp propagate unchanged.
    """
    grid = InlineGrid(client_app, num_supernodes, run_config, run_id=run_id, timeout_mode=timeout_mode)
    context = Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config or {}))
    with task_identity(run_id):
        server_app(grid=grid, context=context)
    return InlineResult(context, grid)
