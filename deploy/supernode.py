"""Flower's `flower-supernode`, with its idle wait between pulls shortened.

    python -m deploy.supernode [flower-supernode's arguments]

Why: flwr 1.42's SuperNode loop (`flwr/supernode/start_client_internal.py`)
sleeps a hard-coded 3 s whenever a pull from the SuperLink finds no message,
and there is no flag for it. A site's message of a round therefore waits up
to 3 s in the SuperLink before its SuperNode fetches it, twice a round
(train, then evaluate), and `medfed bench deploy-round` measured those
waits as most of a deployed round's time outside medfed's processes. This
launcher runs the unchanged `flower-supernode` command with that one wait
set to `MEDFED_SUPERNODE_IDLE_S` seconds (default 0.25): each idle pull is
one small request to the SuperLink, so 3 s -> 0.25 s costs a SuperLink 12x
the idle requests per hospital, 4 a second. The same loop fetches a
message's objects with `pull_objects`, whose retry backoff starts at 1 s and
doubles (flwr's defaults): when a message is announced before the ServerApp
has pushed all its objects, the SuperNode waits 1 s, then 2 s more. Here
the backoff starts at `OBJECT_BACKOFF_S` and is capped at ten times that,
as medfed's executor polls the SuperNode. Every other wait of Flower's is
left as it is. `medfed deploy local` and `medfed deploy executor --
flower-supernode ...` (the compose hospitals) start SuperNodes through it.

One repair: a reply whose app process died while sending it. An app (medfed's
executor or `flwr-clientapp`) sends a reply in two steps: the message and its
object tree, then each object. flwr 1.42's SuperNode forwards the message to
the SuperLink as soon as it has it, then waits, forever, for the objects it
lacks (`_push_messages`): an app killed between the two steps left that
SuperNode stuck for the rest of the study, and the SuperLink holding a reply
that never completes. The ServerApp's pull of that reply waits for its
objects until the SuperLink's push session expires (180 s), and the other
sites' replies that arrive meanwhile are not pulled: a round-timeout shorter
than that failed every site of the round. Here a reply goes to the SuperLink
only once all its objects are in the SuperNode's store; when some stop
arriving for `REPLY_STALL_S` (flwr's own 60 s after which a ClientApp that
sends no heartbeat "stopped responding"), Flower's "ClientApp crashed" error
reply (`CLIENT_APP_CRASHED`) goes in its place, saying how many objects never
came, and the SuperNode takes the next message (`MEDFED_SUPERNODE_REPLY_STALL_S`
sets that wait).
"""

from __future__ import annotations

import functools
import os
import sys
import time

FLOWER_IDLE_WAIT_S = 3  # what flwr 1.42's SuperNode loop sleeps after an empty pull
DEFAULT_IDLE_S = 0.25
OBJECT_BACKOFF_S = 0.05  # first retry of a message object the SuperLink does not have yet
REPLY_STALL_S = 60.0  # a reply's missing objects, none arriving this long: its sender died
REPLY_POLL_S = 0.05


class _IdleClock:
    """The `time` module as the SuperNode loop sees it: the same, except that
    its 3 s idle sleep takes `idle_s`."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle_s if seconds == FLOWER_IDLE_WAIT_S else seconds)


def _env_seconds(name: str, default: float, high: float) -> float:
    """Seconds from the environment variable `name` (`default` when unset), in (0, high]."""
    text = os.environ.get(name, str(default))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= high:
        raise SystemExit(f"{name}={text!r}: seconds in (0, {high}]")
    return value


def idle_seconds() -> float:
    return _env_seconds("MEDFED_SUPERNODE_IDLE_S", DEFAULT_IDLE_S, FLOWER_IDLE_WAIT_S)


def reply_stall_seconds() -> float:
    return _env_seconds("MEDFED_SUPERNODE_REPLY_STALL_S", REPLY_STALL_S, 3600)


def patch_idle_wait(idle_s: float) -> None:
    """Give flwr's SuperNode loop the shorter idle wait (raises if flwr changed)."""
    from deploy.flwr_internals import FlwrInternalsError
    from deploy.flwr_internals import supernode_loop as loop

    if not isinstance(loop.time, (type(time), _IdleClock)):
        raise FlwrInternalsError(
            f"{loop.__name__}.time is no longer the `time` module: port patch_idle_wait "
            "(deploy/supernode.py), or run flower-supernode directly"
        )
    loop.time = _IdleClock(idle_s)
    pull = loop.pull_objects
    if not isinstance(pull, functools.partial):
        loop.pull_objects = functools.partial(
            pull, initial_backoff=OBJECT_BACKOFF_S, backoff_cap=10 * OBJECT_BACKOFF_S
        )


def missing_objects(store, tree) -> list[str]:
    """Object ids of `tree` (a message's ObjectTree) that `store` does not hold yet."""
    from deploy.flwr_internals import iterate_object_tree

    return [t.object_id for t in iterate_object_tree(tree) if not store.get(t.object_id)]


def wait_for_objects(
    store, tree, stall_s: float = REPLY_STALL_S, poll_s: float = REPLY_POLL_S
) -> list[str]:
    """Wait until `store` holds every object of `tree`; return those still missing
    once none has arrived for `stall_s` seconds (empty: the reply is complete)."""
    missing = missing_objects(store, tree)
    last, progress = len(missing), time.monotonic()
    while missing and time.monotonic() - progress < stall_s:
        time.sleep(poll_s)
        missing = missing_objects(store, tree)
        if len(missing) < last:
            last, progress = len(missing), time.monotonic()
    return missing


def crashed_reply(message, missing: int, total: int):
    """Flower's "ClientApp crashed" error reply in place of `message`, a reply whose
    objects never all arrived: the same metadata (run, nodes, the message it answers,
    created-at and TTL), an error instead of content."""
    from flwr.app import Error, Metadata

    from deploy.flwr_internals import ErrorCode, make_message

    m = message.metadata
    metadata = Metadata(
        run_id=m.run_id,
        message_id="",
        src_node_id=m.src_node_id,
        dst_node_id=m.dst_node_id,
        reply_to_message_id=m.reply_to_message_id,
        group_id=m.group_id,
        created_at=m.created_at,
        ttl=m.ttl,
        message_type=m.message_type,
    )
    reason = (
        f"ClientApp stopped while sending its reply: {missing} of its {total} objects "
        "never reached the SuperNode"
    )
    reply = make_message(metadata=metadata, error=Error(ErrorCode.CLIENT_APP_CRASHED, reason))
    reply.metadata.__dict__["_message_id"] = reply.object_id
    return reply


def complete_replies_only(push_messages, stall_s: float = REPLY_STALL_S):
    """flwr's `_push_messages`, sending a reply to the SuperLink only once every object
    of it is in the SuperNode's store; a reply whose objects stopped arriving goes as
    Flower's "ClientApp crashed" error instead (see the module's docstring)."""

    @functools.wraps(push_messages)
    def guarded(*, state, object_store, send, push_object):
        from deploy.flwr_internals import (
            get_all_nested_objects,
            get_object_tree,
            iterate_object_tree,
            log,
        )

        def send_complete(message, object_tree, *args):
            missing = wait_for_objects(object_store, object_tree, stall_s)
            if not missing:
                return send(message, object_tree, *args)
            total = sum(1 for _ in iterate_object_tree(object_tree))
            log(
                40,
                "reply %s to message %s: %d of %d objects never arrived (its ClientApp "
                "stopped while sending it); sending a ClientApp-crashed error instead",
                message.metadata.message_id,
                message.metadata.reply_to_message_id,
                len(missing),
                total,
            )
            error = crashed_reply(message, len(missing), total)
            ids, session_id = send(error, get_object_tree(error), *args)
            for obj_id, obj in get_all_nested_objects(error).items():
                if obj_id in ids:
                    push_object(error.metadata.run_id, session_id, obj_id, obj.deflate())
            return set(), session_id  # nothing left of the broken reply to push

        return push_messages(
            state=state, object_store=object_store, send=send_complete, push_object=push_object
        )

    guarded.medfed_guarded = True
    return guarded


def patch_reply_guard(stall_s: float = REPLY_STALL_S) -> None:
    """Give flwr's SuperNode loop `complete_replies_only` (raises if flwr changed)."""
    from deploy.flwr_internals import supernode_loop as loop

    push = loop._push_messages
    if not getattr(push, "medfed_guarded", False):
        loop._push_messages = complete_replies_only(push, stall_s)


def supernode_command(argv: list[str]) -> list[str]:
    """`argv` with a leading `flower-supernode` (any path) run through this launcher."""
    if argv and os.path.basename(argv[0]) == "flower-supernode":
        return [sys.executable, "-m", "deploy.supernode", *argv[1:]]
    return list(argv)


def main() -> None:
    patch_idle_wait(idle_seconds())
    patch_reply_guard(reply_stall_seconds())
    from deploy.flwr_internals import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
