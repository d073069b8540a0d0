"""Flower's Grid, reporting each reply as it arrives.

Why a wrapper around Flower's Grid: `Strategy.start` sends each phase with
`grid.send_and_receive`, which returns only when every reply is in (no
per-reply progress), and on the deployment runtime flwr 1.42's Grid polls the
SuperLink every 3 s, adding up to 3 s to every phase of every round. This one
pushes the same messages, pulls every `poll_s` seconds, emits a `reply`
progress event per reply and records how long each phase took. Everything
else is the wrapped Grid's.

One correction: when a SuperNode has gone (a hospital stopped), the SuperLink
answers for it with an error reply ("Node Unavailable") whose source is the
SuperLink itself (node id 1), so a strategy could not tell which site failed.
Such a reply is attributed here to the node its message was sent to.

And one addition: messages travel packed (`study.transport`: each
ArrayRecord as one Array, so a message is a handful of Flower objects, not
one per tensor), and replies are unpacked before anyone reads them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid

from server.progress import Events
from study import transport


class ReportingGrid(Grid):
    def __init__(self, grid: Grid, events: Events, *, poll_s: float = 0.1) -> None:
        self.inner, self.events, self.poll_s = grid, events, poll_s
        self.phase_seconds: dict[tuple[int, str], float] = {}  # (round, phase) -> seconds
        # the nodes strategies may sample: the enrolled sites (set by the study)
        self.admit: Callable[[int], bool] = lambda node: True

    # -- the wrapped Grid ---------------------------------------------------------------
    def set_run(self, run) -> None:
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """The connected nodes that are enrolled sites: a node that has not said
        which site it is (or that a restarted site replaced) is not sampled."""
        return [node for node in self.inner.get_node_ids() if self.admit(node)]

    def all_node_ids(self) -> list[int]:
        return list(self.inner.get_node_ids())

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    # -- send and receive, with progress ----------------------------------------------------
    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        phase = messages[0].metadata.message_type.split(".")[0]
        config = messages[0].content.get("config")
        rnd = int(config["server-round"]) if config and "server-round" in config else 0
        start = time.perf_counter()

        def report(done: int) -> None:
            if phase in ("train", "evaluate"):
                self.events.emit("reply", round=rnd, phase=phase, done=done, of=len(messages))

        replies = exchange(self, messages, timeout, self.poll_s, report)
        self.phase_seconds[(rnd, phase)] = time.perf_counter() - start
        return replies


def exchange(
    grid: Grid,
    messages: list[Message],
    timeout: float | None,
    poll_s: float,
    on_reply: Callable[[int], None] = lambda done: None,
) -> list[Message]:
    """Push `messages` through `grid`, then pull every `poll_s` seconds until each
    has its reply or `timeout` passes; `on_reply(replies so far)` after each reply.
    Messages travel packed (study.transport: one Array per ArrayRecord) and
    replies are unpacked; a reply that does not unpack becomes that site's error
    reply. The SuperLink's error replies are attributed to their destination node."""
    for msg in messages:
        if msg.has_content():
            msg.content = transport.pack(msg.content)
    ids = list(grid.push_messages(messages))
    sent = dict(zip(ids, messages, strict=True))
    sent_to = {mid: msg.metadata.dst_node_id for mid, msg in sent.items()}
    waiting = set(ids)
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while waiting and (deadline is None or time.monotonic() < deadline):
        got = list(grid.pull_messages(waiting))
        for reply in got:
            waiting.discard(reply.metadata.reply_to_message_id)
            attribute_to_destination(reply, sent_to)
            reply = unpacked(reply, sent)
            replies.append(reply)
            on_reply(len(replies))
        if waiting and not got:
            time.sleep(poll_s)
    return replies


def unpacked(reply: Message, sent: dict[str, Message]) -> Message:
    """`reply` with its packed records unpacked; a malformed packing (a site's
    reply is hostile input) becomes that site's error reply, with the reason.
    Any exception unpacking it does (transport.unpack validates precisely and
    raises TransportError; anything else it missed is caught here too): one
    site's reply never ends the round or the study."""
    if not reply.has_content() or not transport.is_packed(reply.content):
        return reply
    try:
        reply.content = transport.unpack(reply.content)
        return reply
    except Exception as exc:  # noqa: BLE001 - hostile input: that site's error, with the reason
        original = sent.get(reply.metadata.reply_to_message_id)
        if original is None:
            raise
        why = str(exc) if isinstance(exc, transport.TransportError) else _describe(exc)
        reason = f"node {reply.metadata.src_node_id}: reply not readable: {why}"
        return Message(Error(code=ErrorCode.UNKNOWN, reason=reason), reply_to=original)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def attribute_to_destination(reply: Message, sent_to: dict[str, int]) -> None:
    """The SuperLink's own error reply for a node (source: the SuperLink) is
    given the source of the node its message went to; other replies are
    left as they are. (Metadata has no setter for the source: flwr 1.42 keeps
    it in the instance's __dict__.)"""
    node = sent_to.get(reply.metadata.reply_to_message_id)
    if reply.has_error() and reply.metadata.src_node_id == SUPERLINK_NODE_ID and node:
        reply.metadata.__dict__["_src_node_id"] = node
