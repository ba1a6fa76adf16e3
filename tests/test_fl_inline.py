"""The inline engine (simulations/inline.py): Flower's Grid semantics without Ray, and the
same federated results as Flower's simulation engine."""

import time
from dataclasses import replace

import pandas as pd
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import ServerApp
from flwr.supercore.task_identity import TaskIdentity

from simulations.config import FLConfig
from simulations.inline import DEFAULT_RUN_ID, NODE_ID_OFFSET, InlineGrid, run_inline, task_identity
from simulations.run import run_inprocess

# -- the Grid, with a toy ClientApp (fast) ----------------------------------------------


def toy_app(sleep: float = 0.0) -> ClientApp:
    """query: counts its calls in context.state; a "boom" config raises after touching the
    state; a "mutate" config changes the run config; "poke" changes the message it got."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context) -> Message:
        calls = int(context.state["n"]["calls"]) + 1 if "n" in context.state else 1
        context.state["n"] = MetricRecord({"calls": calls})
        cfg = msg.content["config"]
        if "poke" in cfg:
            msg.content["config"]["poke"] = "changed by the client"
        if "boom" in cfg:
            raise RuntimeError("boom in the client")
        if "mutate" in cfg:
            context.run_config["rounds"] = 99
        time.sleep(sleep)
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"pid": pid, "calls": calls,
                                                            "n": int(context.node_config["num-partitions"])})}),
                       reply_to=msg)

    return app


def query(grid, node_ids, **config):
    return [Message(RecordDict({"config": ConfigRecord(config)}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in node_ids]


@pytest.fixture
def identity():
    with task_identity(DEFAULT_RUN_ID):
        yield


def by_node(replies):
    return {r.metadata.src_node_id: r for r in replies}


def test_nodes_are_fixed_and_state_persists_between_calls(identity):
    grid = InlineGrid(toy_app(), 3, {"rounds": 2})
    assert list(grid.get_node_ids()) == [NODE_ID_OFFSET + p for p in range(3)]
    assert [n.node_id for n in grid.get_nodes()] == list(grid.get_node_ids())
    for expected in (1, 2):
        replies = by_node(grid.send_and_receive(query(grid, grid.get_node_ids()), timeout=60))
        for pid in range(3):
            m = replies[NODE_ID_OFFSET + pid].content["metrics"]
            assert (m["pid"], m["calls"], m["n"]) == (pid, expected, 3)
    assert grid.stats[MessageType.QUERY]["calls"] == 6
    # replies answer their messages: ids, source and destination
    ids = list(grid.push_messages(query(grid, [NODE_ID_OFFSET + 1])))
    (reply,) = grid.pull_messages(ids)
    assert reply.metadata.reply_to_message_id == ids[0] and reply.metadata.src_node_id == NODE_ID_OFFSET + 1
    assert reply.metadata.dst_node_id == 1 and reply.metadata.run_id == DEFAULT_RUN_ID
    # pulled once: asking again gives Flower's "message unavailable" error
    (again,) = grid.pull_messages(ids)
    assert again.has_error() and again.error.code == ErrorCode.MESSAGE_UNAVAILABLE


def test_a_client_exception_becomes_flowers_error_reply_and_leaves_the_context(identity):
    grid = InlineGrid(toy_app(), 2)
    grid.send_and_receive(query(grid, grid.get_node_ids()), timeout=60)  # calls = 1 on both
    replies = by_node(grid.send_and_receive(query(grid, [NODE_ID_OFFSET], boom=1), timeout=60))
    error = replies[NODE_ID_OFFSET].error
    assert error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert error.reason == ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\n"
                            "Exception ClientAppException occurred. Message: boom in the client'>")
    # the failed call's change to context.state is discarded, as with Flower's actors
    assert int(grid.contexts[NODE_ID_OFFSET].state["n"]["calls"]) == 1
    # changing the run config is refused as Flower's update_context refuses it
    replies = by_node(grid.send_and_receive(query(grid, [NODE_ID_OFFSET + 1], mutate=1), timeout=60))
    assert replies[NODE_ID_OFFSET + 1].error.code == ErrorCode.UNKNOWN
    assert "cannot be modified" in replies[NODE_ID_OFFSET + 1].error.reason
    assert grid.run_config == {} and int(grid.contexts[NODE_ID_OFFSET + 1].state["n"]["calls"]) == 1


def test_clients_get_a_copy_of_the_message(identity):
    grid = InlineGrid(toy_app(), 2)
    messages = query(grid, grid.get_node_ids(), poke="sent")
    shared = RecordDict({"config": ConfigRecord({"poke": "sent"})})
    for m in messages:  # one content object for both, as strategies build them
        m.content = shared
    replies = grid.send_and_receive(messages, timeout=60)
    assert len(replies) == 2 and shared["config"]["poke"] == "sent"


def test_invalid_destinations_are_not_sent(identity):
    grid = InlineGrid(toy_app(), 2)
    replies = grid.send_and_receive(query(grid, [NODE_ID_OFFSET, 12345]), timeout=60)
    assert [r.metadata.src_node_id for r in replies] == [NODE_ID_OFFSET]


def test_message_ids_and_expired_replies_go_to_their_node(identity):
    """Ids: the hash of the metadata, on the grid's copy (no public setter): the caller's
    message keeps its empty id. A message whose TTL ran out before delivery gets the
    SuperLink's MESSAGE_UNAVAILABLE reply; rounds.exchange finds its node through the id."""
    from simulations.messages import message_id
    from simulations.rounds import exchange

    grid = InlineGrid(toy_app(sleep=0.2), 2)
    messages = query(grid, grid.get_node_ids())
    ids = list(grid.push_messages(messages))
    assert ids == [message_id(m) for m in messages] and all(m.metadata.message_id == "" for m in messages)
    assert list(grid.push_messages(messages[:1])) == ids[:1] and len(grid._pending) == 2  # stored once
    assert [r.metadata.reply_to_message_id for r in grid.pull_messages(ids)] == ids
    first, second = query(grid, grid.get_node_ids())
    second = Message(second.content, dst_node_id=second.metadata.dst_node_id, message_type=MessageType.QUERY, ttl=0.1)
    replies = by_node(exchange(grid, [first, second], timeout=60))  # the first call outlives the second's TTL
    assert replies[NODE_ID_OFFSET].has_content()
    late = replies[NODE_ID_OFFSET + 1]
    assert late.error.code == ErrorCode.MESSAGE_UNAVAILABLE and late.metadata.reply_to_message_id == message_id(second)


@pytest.mark.parametrize("mode", ["per-message", "total"])
def test_timeouts(identity, mode):
    grid = InlineGrid(toy_app(sleep=0.05), 3, timeout_mode=mode)
    assert grid.send_and_receive(query(grid, grid.get_node_ids()), timeout=0.01) == []
    stats = grid.stats[MessageType.QUERY]
    if mode == "per-message":  # every call ran, each too long
        assert (stats["calls"], stats["late"], stats["undelivered"]) == (3, 3, 0)
        assert all(int(c.state["n"]["calls"]) == 1 for c in grid.contexts.values())  # late state kept
    else:  # the first call used up the time; the rest were never delivered
        assert (stats["calls"], stats["late"], stats["undelivered"]) == (1, 1, 2)
    assert len(grid.send_and_receive(query(grid, grid.get_node_ids()), timeout=10)) == 3


def test_run_inline_gives_the_server_its_run_config_and_restores_task_identity():
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    server, seen = ServerApp(), {}

    @server.main()
    def main(grid, context):
        seen["run_config"] = dict(context.run_config)
        seen["replies"] = list(grid.send_and_receive(query(grid, grid.get_node_ids()), timeout=60))

    result = run_inline(server, toy_app(), 4, {"rounds": 2, "strategy": "fedavg"})
    assert seen["run_config"] == {"rounds": 2, "strategy": "fedavg"}
    assert sorted(int(r.content["metrics"]["pid"]) for r in seen["replies"]) == [0, 1, 2, 3]
    assert result.context.node_id == 0 and result.grid.contexts[NODE_ID_OFFSET].run_config == seen["run_config"]
    assert (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id) == saved


# -- whole federations (fedhar's ServerApp and ClientApp) --------------------------------


def tiny(out_dir, **changes) -> FLConfig:  # as tests/test_fl_strategies.py
    base = dict(synthetic_domains=3, synthetic_subjects=3, pretrain_epochs=1, rounds=2, local_epochs=1,
                batch_size=32, out_dir=str(out_dir))
    return FLConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def cache(reference_cache):
    """The session's window and backbone cache (tests/conftest.py), filled before any run,
    then read from disk by every run.

    Why: fedhar.data prepares windows as a transposed (non-C-contiguous) view and caches
    them C-contiguous, and numpy's float32 means over the two layouts differ in the last
    bit; a client's normalisation then differs by ~1e-7 and training by ~1e-5 after two
    rounds. With Ray every actor reads the cache, while the inline engine's clients share
    the driver's in-memory windows, so a run that prepared them in-process would differ
    from a Ray run at that level. Read from the same cache, the engines agree exactly."""
    from simulations import task

    task._federation.cache_clear()  # nothing prepared in memory by an earlier module
    return reference_cache


def tables(out):
    return pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")


NUMBERS = ["round", "phase", "partition_id", "client", "status", "train_loss", "num_examples", "accuracy",
           "macro_f1", "precision", "recall", "bytes_received", "bytes_sent"]


def ordered(clients):
    return clients[NUMBERS].sort_values(["round", "phase", "partition_id"]).reset_index(drop=True)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedavg", "fedsa"])
def test_inline_and_ray_engines_give_identical_tables(strategy, tmp_path, cache, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    from simulations import task

    task._federation.cache_clear()
    inline = tables(run_inprocess(tiny(tmp_path / "inline", strategy=strategy), engine="inline"))
    ray = tables(run_inprocess(tiny(tmp_path / "ray", strategy=strategy), engine="ray"))
    # same shape (rows and columns) ...
    assert list(inline[0].columns) == list(ray[0].columns) and inline[0].shape == ray[0].shape
    assert sorted(inline[1].columns) == sorted(ray[1].columns) and inline[1].shape == ray[1].shape
    # ... and the same numbers, bit for bit (per round, per client)
    pd.testing.assert_frame_equal(inline[0], ray[0], check_exact=True)
    pd.testing.assert_frame_equal(ordered(inline[1]), ordered(ray[1]), check_exact=True)
    assert (inline[0]["clients_trained"] == 3).all() and (inline[0]["failed"] == 0).all()


@pytest.mark.slow
def test_a_failing_client_is_recorded_and_the_run_goes_on(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    rounds, clients = tables(run_inprocess(tiny(tmp_path / "fail", inject_failure="1:1"), engine="inline"))
    first = clients[(clients["round"] == 1) & (clients["phase"] == "train")].set_index("partition_id")
    assert first.loc[1, "status"] == "failed"
    assert "ClientAppException" in first.loc[1, "error"] and "inject-failure" in first.loc[1, "error"]
    assert (first.loc[[0, 2], "status"] == "ok").all()
    assert list(rounds["failed"]) == [1, 0] and list(rounds["clients_trained"]) == [2, 3]
    assert rounds["accuracy"].notna().all()


@pytest.mark.slow
def test_fedsa_keeps_each_clients_b_in_its_context_state(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("FEDHAR_CACHE_DIR", str(cache))
    import numpy as np

    from simulations.client_app import LOCAL_B, build_client_app
    from simulations.server_app import build_server_app
    from simulations.task import ensure_backbone

    cfg = tiny(tmp_path / "fedsa", strategy="fedsa")
    cfg = replace(cfg, backbone=str(ensure_backbone(cfg)))
    result = run_inline(build_server_app(cfg), build_client_app(cfg), 3, cfg.to_run_config())
    bs = [result.grid.contexts[NODE_ID_OFFSET + p].state[LOCAL_B] for p in range(3)]
    assert all(len(b) > 0 and set(b) == set(bs[0]) for b in bs)
    assert all(k.endswith("lora_B.default.weight") or ".lora_B." in k for k in bs[0])
    first = sorted(bs[0])[0]
    values = [b[first].numpy() for b in bs]
    assert all(np.abs(v).max() > 0 for v in values)  # trained (LoRA's B starts at zero)
    assert not np.array_equal(values[0], values[1])  # each client keeps its own
    rounds, clients = tables(tmp_path / "fedsa")
    sent = clients[clients["phase"] == "train"]["bytes_sent"]
    assert (sent < 693_792).all()  # B stays home: less than adapters + head (tests/test_fl_strategies.py)
    assert (rounds["clients_trained"] == 3).all() and rounds["accuracy"].notna().all()
