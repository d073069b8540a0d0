"""deploy/supernode.py: flower-supernode with a shorter idle wait."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from deploy import supernode


def test_only_flower_s_idle_wait_is_shortened(monkeypatch):
    from flwr.supernode import start_client_internal as loop

    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(loop, "time", time)
    supernode.patch_idle_wait(0.25)
    loop.time.sleep(3)  # the loop's sleep after an empty pull
    loop.time.sleep(0.5)  # any other wait is Flower's own
    assert slept == [0.25, 0.5]
    assert loop.time.monotonic is time.monotonic
    assert loop.pull_objects.keywords == {"initial_backoff": 0.05, "backoff_cap": 0.5}
    supernode.patch_idle_wait(0.25)  # twice: still one layer
    assert not isinstance(loop.pull_objects.func, type(loop.pull_objects))


def test_commands_and_settings():
    assert supernode.supernode_command(["/x/bin/flower-supernode", "--insecure"]) == [
        sys.executable,
        "-m",
        "deploy.supernode",
        "--insecure",
    ]
    assert supernode.supernode_command(["other", "--a"]) == ["other", "--a"]
    for name, bad in [("MEDFED_SUPERNODE_IDLE_S", x) for x in ("0", "nan", "5", "x")] + [
        ("MEDFED_SUPERNODE_REPLY_STALL_S", x) for x in ("0", "-1", "nan", "x")
    ]:
        res = subprocess.run(
            [sys.executable, "-m", "deploy.supernode", "--help"],
            env={name: bad, "PATH": ""},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode != 0 and name in res.stderr, bad
    res = subprocess.run(
        [sys.executable, "-m", "deploy.supernode", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "--superlink" in res.stdout


def _reply(objects_stored: int | None):
    """A train reply (an ArrayRecord: several objects) in a SuperNode's object store,
    with `objects_stored` of its objects there (None: all), as an app leaves it."""
    import numpy as np
    from flwr.app import ArrayRecord, RecordDict
    from flwr.app.message.message import make_message
    from flwr.app.metadata import Metadata
    from flwr.supercore.inflatable.inflatable_object import (
        get_all_nested_objects,
        get_object_tree,
    )
    from flwr.supercore.object_store import ObjectStoreFactory

    metadata = Metadata(
        run_id=7,
        message_id="",
        src_node_id=5,
        dst_node_id=1,
        reply_to_message_id="the-train-message",
        group_id="2",
        created_at=time.time(),
        ttl=600.0,
        message_type="train",
    )
    content = RecordDict({"arrays": ArrayRecord([np.ones(3), np.zeros(2)])})
    reply = make_message(metadata=metadata, content=content)
    reply.metadata.__dict__["_message_id"] = reply.object_id
    store = ObjectStoreFactory().store()
    tree = get_object_tree(reply)
    store.preregister(7, tree)
    objects = list(get_all_nested_objects(reply).items())
    for obj_id, obj in objects[: len(objects) if objects_stored is None else objects_stored]:
        store.put(obj_id, obj.deflate())
    return reply, tree, store, len(objects)


def _push_through_guard(reply, tree, store, stall_s: float):
    """flwr's _push_messages as far as the guard sees it: send(message, tree, runtime)."""
    sent, pushed = [], []

    def send(message, object_tree, runtime):
        sent.append((message, object_tree))
        return {t.object_id for t in [object_tree]}, "session-1"

    def flwr_push_messages(*, state, object_store, send, push_object):
        return send(reply, tree, 0.1)

    guarded = supernode.complete_replies_only(flwr_push_messages, stall_s=stall_s)
    result = guarded(
        state=None,
        object_store=store,
        send=send,
        push_object=lambda run, session, obj_id, content: pushed.append((obj_id, content)),
    )
    return result, sent, pushed


def test_a_complete_reply_goes_as_it_is():
    reply, tree, store, _ = _reply(None)
    result, sent, pushed = _push_through_guard(reply, tree, store, stall_s=5)
    assert [m for m, _ in sent] == [reply] and sent[0][1] is tree
    assert result == ({tree.object_id}, "session-1") and pushed == []


def test_a_reply_whose_objects_stopped_coming_goes_as_a_crash_error():
    """The app died after sending the reply's message and one object: after stall_s
    without a new object, Flower's ClientApp-crashed error goes in its place (same
    run, nodes, message replied to, TTL), its one object pushed; nothing of the
    broken reply is left for flwr's loop to push."""
    reply, tree, store, total = _reply(1)
    t0 = time.monotonic()
    result, sent, pushed = _push_through_guard(reply, tree, store, stall_s=0.3)
    assert 0.3 <= time.monotonic() - t0 < 5
    ((error, error_tree),) = sent
    assert error.has_error() and error.error.code == 8  # ErrorCode.CLIENT_APP_CRASHED
    assert error.error.reason == (
        f"ClientApp stopped while sending its reply: {total - 1} of its {total} objects "
        "never reached the SuperNode"
    )
    for field in ("run_id", "src_node_id", "dst_node_id", "reply_to_message_id", "ttl"):
        assert getattr(error.metadata, field) == getattr(reply.metadata, field), field
    assert error.metadata.message_id == error.object_id == error_tree.object_id
    assert [obj_id for obj_id, _ in pushed] == [error.object_id]
    assert result == (set(), "session-1")


def test_a_reply_still_arriving_is_waited_for():
    """Objects that keep arriving, each sooner than stall_s after the last: the reply
    goes complete, however long it takes in all."""
    import threading

    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    reply, tree, store, total = _reply(1)
    objects = list(get_all_nested_objects(reply).items())[1:]

    def trickle():
        for obj_id, obj in objects:
            time.sleep(0.2)
            store.put(obj_id, obj.deflate())

    feeder = threading.Thread(target=trickle)
    feeder.start()
    result, sent, _ = _push_through_guard(reply, tree, store, stall_s=0.5)
    feeder.join()
    assert [m for m, _ in sent] == [reply] and total > 2


def test_the_guard_is_installed_once():
    from flwr.supernode import start_client_internal as loop

    supernode.patch_reply_guard(1.0)
    first = loop._push_messages
    supernode.patch_reply_guard(1.0)
    assert loop._push_messages is first and first.medfed_guarded


@pytest.fixture(autouse=True)
def _restore_loop_time():
    from flwr.supernode import start_client_internal as loop

    before = loop.time, loop.pull_objects, loop._push_messages
    yield
    loop.time, loop.pull_objects, loop._push_messages = before
