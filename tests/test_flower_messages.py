"""simulations/messages.py against Flower's own (non-public) originals: each local equivalent
must match what Flower 1.41 does, so an upgrade of Flower that changes one fails here."""

import copy

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.app.message.message import remove_content_from_message
from flwr.clientapp.client_app import ClientAppException
from flwr.common import constant
from flwr.server.superlink.linkstate import utils as linkstate_utils
from flwr.server.utils.validator import validate_message
from flwr.supercore.constant import SYSTEM_MESSAGE_TYPE

from simulations import messages
from simulations.inline import DEFAULT_RUN_ID, task_identity


@pytest.fixture
def identity():
    with task_identity(DEFAULT_RUN_ID):
        yield


def instruction(dst: int = 7, **kw) -> Message:
    return Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=dst, message_type=MessageType.QUERY, **kw)


def flower_id(msg: Message) -> Message:
    """A copy of ``msg`` given its id the way Flower's SuperLink does (linkstate utils, grpc/http grid)."""
    out = copy.deepcopy(msg)
    out.metadata.__dict__["_message_id"] = out.object_id
    return out


def test_constants_are_flowers():
    assert messages.SUPERLINK_NODE_ID == constant.SUPERLINK_NODE_ID
    assert messages.PARTITION_ID_KEY == constant.PARTITION_ID_KEY
    assert messages.NUM_PARTITIONS_KEY == constant.NUM_PARTITIONS_KEY
    assert messages.SYSTEM_MESSAGE_TYPE == SYSTEM_MESSAGE_TYPE
    for name in ("UNKNOWN", "CLIENT_APP_RAISED_EXCEPTION", "MESSAGE_UNAVAILABLE"):
        assert getattr(messages.ErrorCode, name) == getattr(constant.ErrorCode, name), name
    assert messages.MESSAGE_UNAVAILABLE_REASON == linkstate_utils.MESSAGE_UNAVAILABLE_ERROR_REASON
    assert messages.CLIENT_APP_EXCEPTION == f"{ClientAppException.__module__}.{ClientAppException.__qualname__}"


def test_a_raising_client_app_gets_flowers_reason_and_log_line():
    raised = RuntimeError("boom in the client")
    error, logged = messages.client_app_raised(raised)
    wrapped = ClientAppException(str(raised))  # what Flower's Ray actor raises, and its worker logs
    assert error.code == constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert error.reason == messages.worker_reason(wrapped) == str(type(wrapped)) + ":<'" + str(wrapped) + "'>"
    assert logged == str(wrapped)


def test_ids_are_the_object_ids_of_the_metadata(identity):
    msg = instruction()
    ours = messages.with_id(msg)
    # Flower's object_id of the message without its content (flwr's own remove_content_from_message)
    assert ours.metadata.message_id == remove_content_from_message(flower_id(msg)).object_id != ""
    assert messages.message_id(ours) == messages.message_id(msg)  # the id and its setting leave it unchanged
    assert messages.message_id(instruction()) != ours.metadata.message_id  # another message, another id
    assert msg.metadata.message_id == "" and ours.content is msg.content  # the caller's message unchanged, content shared
    copy.deepcopy(ours.content)  # hashing the content would leave Flower's memoryview cache on its Arrays


def test_hashing_content_would_break_deepcopy():
    """Why message_id leaves the content out: an Array whose object_id was computed cannot be deep-copied."""
    array = Array(np.zeros(3, dtype=np.float32))
    copy.deepcopy(array)
    assert array.object_id
    with pytest.raises(TypeError, match="memoryview"):
        copy.deepcopy(array)


def test_with_metadata_keeps_every_field_and_changes_only_those_asked(identity):
    msg = Message(Error(code=3, reason="r"), reply_to=flower_id(instruction()))
    msg.metadata.delivered_at = "2026-01-01T00:00:00"
    # every field Flower's Metadata stores is a constructor argument (or delivered_at): none is lost
    stored = {k.lstrip("_") for k in vars(msg.metadata)}
    assert stored == set(messages._METADATA_ARGS) | {"delivered_at"}
    same = messages.with_metadata(msg)
    assert same.metadata == msg.metadata and vars(same.metadata) == vars(msg.metadata) and same.error is msg.error
    moved = messages.with_metadata(msg, src_node_id=99, message_id="abc", delivered_at="")
    assert (moved.metadata.src_node_id, moved.metadata.message_id, moved.metadata.delivered_at) == (99, "abc", "")
    changed = {k for k in vars(msg.metadata) if vars(msg.metadata)[k] != vars(moved.metadata)[k]}
    assert changed == {"_src_node_id", "_message_id", "_delivered_at"}


def test_unavailable_reply_is_flowers():
    ours = messages.unavailable_reply("some-id", 42)
    theirs = linkstate_utils.create_message_error_unavailable_ins_message("some-id", 42)
    a, b = vars(ours.metadata), vars(theirs.metadata)
    assert {k: v for k, v in a.items() if k not in ("_created_at", "_message_id")} == \
        {k: v for k, v in b.items() if k not in ("_created_at", "_message_id")}
    assert abs(a["_created_at"] - b["_created_at"]) < 5
    assert (ours.error.code, ours.error.reason) == (theirs.error.code, theirs.error.reason)
    assert ours.metadata.message_id == messages.message_id(ours) and theirs.metadata.message_id == theirs.object_id


def cases():
    """Instructions and replies, valid and broken in each way the LinkState checks."""
    good = flower_id(instruction())
    reply = flower_id(Message(RecordDict(), reply_to=good))
    yield good, False
    yield reply, True
    yield instruction(), False  # no id
    yield flower_id(instruction(ttl=1e-9)), False  # expired
    yield flower_id(instruction(dst=0)), False  # no destination
    yield good, True  # an instruction checked as a reply
    yield reply, False  # a reply checked as an instruction
    yield Message(RecordDict(), reply_to=good), True  # reply without id
    delivered = flower_id(instruction())
    delivered.metadata.delivered_at = "now"
    yield delivered, False
    old = flower_id(instruction())
    old.metadata.created_at = 1_000_000_000.0
    yield old, False
    yield flower_id(Message(Error(code=0), reply_to=good)), True


def test_problems_are_the_linkstates(identity):
    seen = set()
    for msg, is_reply in cases():
        theirs = validate_message(msg, is_reply_message=is_reply)
        assert messages.problems(msg, is_reply) == theirs
        seen.update(theirs)
    assert len(seen) >= 10  # the cases reach most of Flower's checks
