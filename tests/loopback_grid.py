"""A Flower Grid whose SuperNodes live in this process (tests only).

Each pushed message is serialized and parsed back (as on the wire, so no
record object is shared between the server and a site), handed to the
ClientApp with that node's own Context (its `state` persists across
messages, as a SuperNode's does), and the reply comes back the same way. An
exception that escapes the ClientApp becomes an error reply, as Flower's
runtime makes it. No Ray, no processes: a whole study runs in seconds with
the real ServerApp logic (`server.federation.run_study`), the real ClientApp
and Flower's real SecAgg+ workflow and mod.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from server.federation import run_study
from server.progress import Events
from study.config import Study
from study.schema import read_rounds

FIRST_NODE = 1001


def set_task_identity(monkeypatch) -> None:
    """Messages need the process's task identity, which Flower's runtime sets."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class LoopbackGrid(Grid):
    def __init__(self, app: ClientApp, num_nodes: int, run_config: dict | None = None) -> None:
        self.app = app
        self.contexts = {
            FIRST_NODE + i: Context(
                run_id=1,
                node_id=FIRST_NODE + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i in range(num_nodes)
        }
        self.replies: dict[str, Message] = {}
        self.delivered: list[Message] = []  # every message a node received, as it received it
        self.returned: list[Message] = []  # every reply, as the server received it

    def set_run(self, run) -> None:
        pass

    @property
    def run(self):
        return SimpleNamespace(run_id=1)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            wire = message_to_proto(msg)
            received = message_from_proto(wire)
            self.delivered.append(message_from_proto(wire))  # a copy the ClientApp cannot change
            context = self.contexts[msg.metadata.dst_node_id]
            try:
                reply = self.app(received, context)
            except Exception as exc:  # noqa: BLE001 - what Flower's runtime does
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=repr(exc))
                reply = Message(error, reply_to=received)
            reply = message_from_proto(message_to_proto(reply))
            self.returned.append(reply)
            self.replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))


def small_study(tmp_path, monkeypatch, **changes):
    """A validated phantom study of a few seconds on the loopback grid: phantoms under
    `tmp_path/data`, results in `tmp_path/run` (made), the task identity set."""
    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path / "data"))
    settings = dict(
        name="small",
        num_sites=3,
        num_rounds=1,
        min_sites=2,
        image_size=16,
        phantom_patients=30,
        phantom_size=32,
        batch_size=16,
        holdout_images=8,
        exchange="none",
        out_dir=str(tmp_path / "run"),
    )
    study = Study(**{**settings, **changes})
    study.validate()
    set_task_identity(monkeypatch)
    Path(study.out_dir).mkdir(parents=True, exist_ok=True)
    return study


def run_loopback_study(grid: LoopbackGrid, study, events: Events | None = None) -> list:
    """Run `study` over `grid` with the real ServerApp logic; its rounds.jsonl records."""
    run_study(grid, study, events=events or Events(None))
    return read_rounds(Path(study.out_dir))
