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

Every message of a round passes through here, whichever loop sends it (a
plain round's train and evaluate messages, with their grants and peers'
ciphertext, SecAgg+'s stages and its examples query), so this is where each
is accounted and each reply checked, once (`RoundAccount`: the study's
strategy, with the round's `RoundLedger`):
- a message's bytes before it is packed, a reply's once unpacked;
- a reply is hostile input: a Flower error, a status that claims another
  site or reports an error, or content the round's kind of message cannot
  take (`RoundAccount.accept`, e.g. a train reply's model and metrics) is
  that site's failure with the reason, and the reply reaches the strategy
  or the SecAgg+ protocol as an error reply (a dropout); an exception while
  reading a reply is that site's refusal too, never the study's end;
- a site that does not answer within the timeout is recorded failed.
Enrolment (`query.hello`) is no round's: it passes unaccounted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid

from server.ledger import RoundLedger, no_reply_reason
from server.progress import Events
from study import protocol, transport
from study.sites import SiteId


class RoundAccount(Protocol):
    """A study's rounds as the grid sees them (server.strategy.MedfedStrategy)."""

    ledger: RoundLedger | None  # the round under way (None before the first)
    round_timeout: float

    def site_of(self, node: int) -> SiteId: ...

    def kind(self, msg: Message) -> str | None:
        """What `msg` is in a round: "train", "evaluate", a SecAgg+ stage; None for a
        message that is no round's (enrolment)."""

    def label(self, kind: str) -> str | None:
        """How a site's failure in `kind` is named ("" or "SecAgg+ stage setup"); None
        when a failure there is not the site's failure in the round (evaluation)."""

    def accept(self, site: SiteId, kind: str, reply: Message) -> str | None:
        """Take a checked reply's content into the round; why it is refused, or None."""

    def exchanged(self, kind: str, messages: list[Message], seconds: float) -> None:
        """Every reply of one exchange is in (or the timeout passed)."""


class ReportingGrid(Grid):
    def __init__(self, grid: Grid, events: Events, *, poll_s: float = 0.1) -> None:
        self.inner, self.events, self.poll_s = grid, events, poll_s
        self.phase_seconds: dict[tuple[int, str], float] = {}  # (round, phase) -> seconds
        # the nodes strategies may sample: the enrolled sites (set by the study)
        self.admit: Callable[[int], bool] = lambda node: True
        self.account: RoundAccount | None = None  # the study's rounds (set by the study)

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
        account = self.account
        kind = account.kind(messages[0]) if account is not None else None
        if kind is None or account.ledger is None:  # no round's (enrolment)
            account = None
            phase = messages[0].metadata.message_type.split(".")[0]
            config = messages[0].content.get(protocol.CONFIG)
            has_round = config and protocol.SERVER_ROUND in config
            rnd = int(config[protocol.SERVER_ROUND]) if has_round else 0
        else:  # a round's: SecAgg+'s stages are its training
            rnd = account.ledger.round
            phase = protocol.EVALUATE if kind == protocol.EVALUATE else protocol.TRAIN
            for msg in messages:
                account.ledger.sent(account.site_of(msg.metadata.dst_node_id), msg, kind)
        start = time.perf_counter()

        def report(done: int) -> None:
            if phase in (protocol.TRAIN, protocol.EVALUATE):
                self.events.emit("reply", round=rnd, phase=phase, done=done, of=len(messages))

        def check(reply: Message, sent: Message) -> Message:
            return reply if account is None else checked(account, kind, reply)

        replies = exchange(self, messages, timeout, self.poll_s, report, check)
        seconds = time.perf_counter() - start
        self.phase_seconds[(rnd, phase)] = self.phase_seconds.get((rnd, phase), 0.0) + seconds
        if account is not None:
            _unanswered(account, kind, messages, replies)
            account.exchanged(kind, messages, seconds)
        return replies


def checked(account: RoundAccount, kind: str, reply: Message) -> Message:
    """One reply of a round, accounted and checked (module docstring): the reply, or
    the error reply its site's refusal makes of it."""
    site, ledger = account.site_of(reply.metadata.src_node_id), account.ledger
    label = account.label(kind)
    prefix = f"{label}: " if label else ""
    if reply.has_error():
        if label is not None:
            ledger.refuse(site, f"{prefix}flower error {reply.error.code}: {reply.error.reason}")
        return reply
    ledger.received(site, reply, kind)
    try:
        problem = None if label is None else status_problem(reply.content, site)
        problem = problem or account.accept(site, kind, reply)
    except Exception as exc:  # noqa: BLE001 - a site's reply is hostile input
        problem = f"the reply is malformed ({type(exc).__name__}: {exc}); refused"
    if not problem:
        return reply
    ledger.refuse(site, prefix + problem)
    error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=prefix + problem)
    return Message(error=error, metadata=reply.metadata)


def status_problem(content: RecordDict, site: SiteId) -> str | None:
    """Why a reply's `status` is refused (it claims another site than the one its
    node enrolled as, or reports the site's error), or None."""
    status = content.get(protocol.STATUS)
    claimed = status.get(protocol.SITE) if isinstance(status, ConfigRecord) else None
    if not isinstance(claimed, int) or isinstance(claimed, bool) or claimed != site.index:
        enrolled = site.index if site.is_site else site.name
        return (
            f"the reply claims site {claimed!r} but came from the node enrolled as "
            f"site {enrolled}; refused"
        )
    if status.get(protocol.ERROR):
        return str(status[protocol.ERROR])
    return None


def _unanswered(account: RoundAccount, kind: str, messages, replies) -> None:
    """Each site asked that did not answer in time is recorded failed."""
    label = account.label(kind)
    if label is None:
        return
    where = f" in {label}" if label else ""
    answered = {reply.metadata.src_node_id for reply in replies}
    for msg in messages:
        if msg.metadata.dst_node_id not in answered:
            account.ledger.no_reply(
                account.site_of(msg.metadata.dst_node_id),
                no_reply_reason(account.round_timeout, where),
            )


def exchange(
    grid: Grid,
    messages: list[Message],
    timeout: float | None,
    poll_s: float,
    on_reply: Callable[[int], None] = lambda done: None,
    check: Callable[[Message, Message], Message] = lambda reply, sent: reply,
) -> list[Message]:
    """Push `messages` through `grid`, then pull every `poll_s` seconds until each
    has its reply or `timeout` passes; `on_reply(replies so far)` after each reply.
    Messages travel packed (study.transport: one Array per ArrayRecord) and
    replies are unpacked; a reply that does not unpack becomes that site's error
    reply. The SuperLink's error replies are attributed to their destination node.
    Each reply, unpacked, passes through `check(reply, message it answers)`."""
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
            reply = check(unpacked(reply, sent), sent.get(reply.metadata.reply_to_message_id))
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
