"""What a Flower engine does to messages, written with Flower's public Message API only.

Flower's engines give a pushed message its id, answer a failed ClientApp call or an unknown
message id with an error reply, and check messages before they store them. Flower 1.41 does
this in non-public modules (``flwr.common.constant``, ``flwr.server.superlink.linkstate``,
``flwr.server.utils.validator``, the Ray worker); this module does the same with ``flwr.app``'s
``Message``, ``Metadata`` and ``Error``. tests/test_flower_messages.py compares each piece
with Flower's own, so an upgrade of Flower that changes one fails there, not silently.
"""

from __future__ import annotations

import copy
import inspect

from flwr.app import Error, Message, Metadata, RecordDict
from flwr.common import now

# flwr.common.constant: the SuperLink's node id (the source of every server message)
# and the node-config keys a simulated node gets
SUPERLINK_NODE_ID = 1
PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
SYSTEM_MESSAGE_TYPE = "system"  # flwr.supercore.constant: the type of the SuperLink's own replies


class ErrorCode:
    """The ``Error.code`` values of flwr.common.constant.ErrorCode that an engine sends."""

    UNKNOWN = 0
    CLIENT_APP_RAISED_EXCEPTION = 2
    MESSAGE_UNAVAILABLE = 3


# flwr.server.superlink.linkstate.utils.MESSAGE_UNAVAILABLE_ERROR_REASON
MESSAGE_UNAVAILABLE_REASON = (
    "Error: Message Unavailable - The requested message could not be found in the database. It may "
    "have expired due to its TTL, been deleted because the destination SuperNode was removed from the "
    "federation, or never existed."
)
# the class Flower wraps a ClientApp's exception in (flwr.clientapp.client_app.ClientAppException):
# error replies name it, and fedhar's tables show its short name
CLIENT_APP_EXCEPTION = "flwr.clientapp.client_app.ClientAppException"

_METADATA_ARGS = tuple(inspect.signature(Metadata).parameters)  # run_id, message_id, src_node_id, ...


def with_metadata(msg: Message, **changes) -> Message:
    """``msg`` with some metadata fields changed, among them those without a setter
    (``message_id``, ``src_node_id``): a new Message with the same content or error object and
    a new ``Metadata``. ``delivered_at`` may be changed too."""
    old = msg.metadata
    delivered_at = changes.pop("delivered_at", old.delivered_at)
    metadata = Metadata(**{name: getattr(old, name) for name in _METADATA_ARGS} | changes)
    if msg.has_error():
        out = Message(error=msg.error, metadata=metadata)
    else:
        out = Message(content=msg.content, metadata=metadata)
    out.metadata.delivered_at = delivered_at  # the constructor clears it
    return out


def message_id(msg: Message) -> str:
    """The id an engine gives ``msg``: the ``object_id`` (a hash) of its metadata. Flower's
    SuperLink and SuperNodes hash the whole message (its simulation draws uuid4s); the content
    is left out here because hashing an Array makes Flower cache memoryviews on it, which
    ``copy.deepcopy`` (of a message for a client, of a node's state) cannot copy. The hash
    leaves the id and ``delivered_at`` out, so a caller finds its message's id this way too."""
    return Message(content=RecordDict(), metadata=copy.deepcopy(msg.metadata)).object_id


def with_id(msg: Message) -> Message:
    """``msg`` (a new Message, same content or error) with its id, ``message_id(msg)``."""
    return with_metadata(msg, message_id=message_id(msg))


def worker_reason(exception: BaseException) -> str:
    """The ``Error.reason`` Flower's simulation worker writes for ``exception``."""
    return f"{type(exception)}:<'{exception}'>"


def client_app_raised(exception: BaseException) -> tuple[Error, str]:
    """The error Flower sends when a ClientApp raised ``exception``, and the line it logs:
    the exception wrapped in a ClientAppException."""
    text = f"\nException ClientAppException occurred. Message: {exception}"
    return Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"<class '{CLIENT_APP_EXCEPTION}'>:<'{text}'>"), text


def unavailable_reply(message_id: str, run_id: int) -> Message:
    """The reply the SuperLink gives for an unknown, already pulled or expired message id."""
    metadata = Metadata(run_id=run_id, message_id="", src_node_id=SUPERLINK_NODE_ID, dst_node_id=SUPERLINK_NODE_ID,
                        reply_to_message_id=message_id, group_id="", created_at=now().timestamp(), ttl=0,
                        message_type=SYSTEM_MESSAGE_TYPE)
    error = Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason=MESSAGE_UNAVAILABLE_REASON)
    return with_id(Message(error=error, metadata=metadata))


def problems(msg: Message, is_reply: bool) -> list[str]:
    """What the LinkState finds wrong with a message (instruction or reply) before storing it."""
    md = msg.metadata
    found = []
    if md.message_id == "":
        found.append("empty `metadata.message_id`")
    if md.created_at < 1740700800.0:  # 28 February 2025, as Flower
        found.append("`metadata.created_at` must be a float that records the unix timestamp "
                     "in seconds when the message was created.")
    if md.delivered_at != "":
        found.append("`metadata.delivered_at` must be an empty str")
    if md.ttl <= 0:
        found.append("`metadata.ttl` must be higher than zero")
    if md.created_at + md.ttl <= now().timestamp():
        found.append("Message TTL has expired")
    if not md.src_node_id:
        found.append("`metadata.src_node_id` is not set.")
    if not md.dst_node_id:
        found.append("`metadata.dst_node_id` is not set.")
    if md.message_type == "":
        found.append("`metadata.message_type` MUST be set")
    if msg.has_content() == msg.has_error():
        found.append("Either message `content` or `error` MUST be set (but not both)")
    if not is_reply:
        if md.reply_to_message_id != "":
            found.append("`metadata.reply_to_message_id` MUST not be set.")
        if md.src_node_id != SUPERLINK_NODE_ID:
            found.append(f"`metadata.src_node_id` is not {SUPERLINK_NODE_ID} (SuperLink node ID)")
    else:
        if md.reply_to_message_id == "":
            found.append("`metadata.reply_to_message_id` MUST be set.")
        if md.src_node_id == SUPERLINK_NODE_ID:
            found.append(f"`metadata.src_node_id` is {SUPERLINK_NODE_ID} (SuperLink node ID)")
        if md.dst_node_id != SUPERLINK_NODE_ID:
            found.append(f"`metadata.dst_node_id` is not {SUPERLINK_NODE_ID} (SuperLink node ID)")
    return found
