"""server/grid.py and server/enrolment.py: whose reply is whose, when hospitals go and come back."""

from __future__ import annotations

import math
import time

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from loopback_grid import (
    FIRST_NODE,
    LoopbackGrid,
    run_loopback_study,
    set_task_identity,
    small_study,
)

from client.client_app import build_client_app
from server.enrolment import EnrolmentError, SiteDirectory
from server.grid import ReportingGrid
from server.progress import Events
from study.config import Study
from study.sites import SiteId


class FakeLink:
    """A Grid whose SuperLink answers for node 22 (gone) with its own error reply
    and lets node 11 answer normally."""

    def __init__(self) -> None:
        self.sent: dict[str, Message] = {}

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{i}"
            msg.metadata.__dict__["_message_id"] = mid
            self.sent[mid] = msg
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in ids:
            msg = self.sent[mid]
            if msg.metadata.dst_node_id == 22:
                out.append(create_message_error_unavailable_res_message(msg.metadata, "node"))
            else:
                reply = Message(RecordDict({"c": ConfigRecord({"ok": 1})}), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
                out.append(reply)
        return out

    def get_node_ids(self):
        return [11, 22]


def test_superlink_error_reply_is_attributed_to_the_node_that_went(tmp_path, monkeypatch):
    set_task_identity(monkeypatch)
    grid = ReportingGrid(FakeLink(), Events(tmp_path / "events.jsonl"), poll_s=0.0)
    messages = [
        Message(
            RecordDict({"config": ConfigRecord({"server-round": 2})}),
            dst_node_id=node,
            message_type="train",
        )
        for node in (11, 22)
    ]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=5)}
    assert set(replies) == {11, 22}  # not SUPERLINK_NODE_ID
    assert replies[22].has_error() and not replies[11].has_error()
    assert SUPERLINK_NODE_ID not in replies


def test_a_site_back_on_a_new_node_keeps_its_old_node_s_late_replies():
    directory = SiteDirectory(Study(num_sites=2))
    directory.node_site = {11: 0, 22: 1}
    directory._hello = lambda grid, nodes, timeout_s: {33: 1}  # site 1 restarted as node 33
    directory.refresh(FakeGrid([11, 33]))
    assert directory.node_site == {11: 0, 33: 1}  # only these are sampled
    assert directory.site_of(22) == SiteId.site(1)  # a late reply of the old node is site 1's
    assert directory.site_of(44) == SiteId.node(44)


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


class LeavingGrid(LoopbackGrid):
    """A loopback federation whose node `gone` drops out once round `from_round - 1` has
    sent its evaluation (so it is not connected when round `from_round` begins) and is
    connected again `away_s` seconds after it was first missed (never, by default)."""

    def __init__(
        self, app, num_nodes: int, gone: int, from_round: int, away_s: float = math.inf
    ) -> None:
        super().__init__(app, num_nodes)
        self.gone, self.from_round, self.away_s = gone, from_round, away_s
        self.evaluates, self.missed_at = 0, None

    def get_node_ids(self):
        nodes = list(self.contexts)
        if self.evaluates >= (self.from_round - 1) * len(nodes):
            self.missed_at = self.missed_at or time.monotonic()
            if time.monotonic() - self.missed_at < self.away_s:
                nodes.remove(self.gone)
        return nodes

    def push_messages(self, messages):
        messages = list(messages)
        self.evaluates += sum(m.metadata.message_type == "evaluate" for m in messages)
        return super().push_messages(messages)


def _waiting(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "waiting"]


def test_a_site_not_connected_when_a_round_begins_is_in_that_rounds_record(tmp_path, monkeypatch):
    # Prepare: site-1 gone from round 2 on; the round does not wait for it
    study = small_study(tmp_path, monkeypatch, num_rounds=2, rejoin_wait=0.0)
    grid = LeavingGrid(build_client_app(study), 3, gone=FIRST_NODE + 1, from_round=2)
    events: list[dict] = []
    # Execute
    first, second = run_loopback_study(grid, study, Events(None, events.append))
    # Assert
    assert [(s.site, s.ok) for s in first.sites] == [(f"site-{i}", True) for i in range(3)]
    assert [s.site for s in second.sites] == ["site-0", "site-1", "site-2"]
    left = second.sites[1]
    assert not left.ok and "not connected when it began" in left.error
    assert left.bytes["message_down"] == 0 and second.sites[0].ok and second.sites[2].ok
    assert _waiting(events) == []


def test_a_round_waits_rejoin_wait_seconds_for_a_missing_site_then_begins_without_it(
    tmp_path, monkeypatch
):
    # Prepare: site-1 gone for good from round 2; the round waits at most 0.5 s for it
    monkeypatch.setattr("server.enrolment.REJOIN_POLL_S", 0.02)
    study = small_study(tmp_path, monkeypatch, num_rounds=2, rejoin_wait=0.5)
    grid = LeavingGrid(build_client_app(study), 3, gone=FIRST_NODE + 1, from_round=2)
    events: list[dict] = []
    # Execute
    _, second = run_loopback_study(grid, study, Events(None, events.append))
    # Assert: one waiting event for round 2 naming site-1, then the round without it
    assert [(e["round"], e["sites"], e["seconds"]) for e in _waiting(events)] == [
        (2, ["site-1"], 0.5)
    ]
    assert not second.sites[1].ok and "not connected when it began" in second.sites[1].error
    assert second.seconds >= 0.5  # the round's time includes the wait
    assert second.sites[0].ok and second.sites[2].ok


def test_a_site_that_reconnects_within_rejoin_wait_takes_part_in_the_round(tmp_path, monkeypatch):
    # Prepare: site-1 is missing when round 2 begins and back 0.15 s later
    monkeypatch.setattr("server.enrolment.REJOIN_POLL_S", 0.02)
    study = small_study(tmp_path, monkeypatch, num_rounds=2, rejoin_wait=60.0)
    grid = LeavingGrid(build_client_app(study), 3, gone=FIRST_NODE + 1, from_round=2, away_s=0.15)
    events: list[dict] = []
    # Execute
    first, second = run_loopback_study(grid, study, Events(None, events.append))
    # Assert: the round waited for it (an event) and then every site trained
    assert [(e["round"], e["sites"]) for e in _waiting(events)] == [(2, ["site-1"])]
    assert [(s.site, s.ok) for s in second.sites] == [(f"site-{i}", True) for i in range(3)]
    assert second.sites[1].bytes["message_down"] > 0


def test_a_secagg_round_waits_rejoin_wait_seconds_for_a_missing_site(tmp_path, monkeypatch):
    # Prepare: a SecAgg+ study (4 sites, at least 3 a round); site-1 is missing when
    # round 2 begins and back 0.15 s later
    monkeypatch.setattr("server.enrolment.REJOIN_POLL_S", 0.02)
    study = small_study(
        tmp_path,
        monkeypatch,
        num_sites=4,
        min_sites=3,
        num_rounds=2,
        rejoin_wait=60.0,
        secure_aggregation="secagg+",
    )
    grid = LeavingGrid(build_client_app(study), 4, gone=FIRST_NODE + 1, from_round=2, away_s=0.15)
    events: list[dict] = []
    # Execute
    _, second = run_loopback_study(grid, study, Events(None, events.append))
    # Assert: the secure round waited for it, as a plain round does, and it is in the sum
    assert [(e["round"], e["sites"]) for e in _waiting(events)] == [(2, ["site-1"])]
    assert [(s.site, s.ok) for s in second.sites] == [(f"site-{i}", True) for i in range(4)]
    assert "site-1" in second.extra["secure_aggregation"]["summed"]
    assert second.sites[1].bytes["model_up"] > 0


def test_the_progress_display_says_which_sites_a_round_waits_for():
    # Prepare
    from rich.console import Console

    from simulations.commands.run import ProgressDisplay

    console = Console(record=True, width=200)
    display = ProgressDisplay(Study(num_sites=3), console, enabled=False)
    # Execute
    display.update({"event": "waiting", "round": 3, "sites": ["site-1", "site-2"], "seconds": 30.0})
    # Assert
    assert display.round == 3
    assert "round 3: waiting up to 30 s for site-1, site-2 to reconnect" in console.export_text()


# -- enrolment: a node's hello is hostile input ------------------------------------------


def _hello_reply(site=None, sites=2, **extra) -> RecordDict:
    fields = {"sites": sites, **extra} if site is None else {"site": site, "sites": sites, **extra}
    return RecordDict({"identity": ConfigRecord(fields)})


class HelloGrid:
    """Nodes that answer the enrolment message with `answers[node]` (its content); the
    connected nodes are `connected` (every answering node unless told)."""

    def __init__(self, answers: dict[int, RecordDict], connected: list[int] | None = None):
        self.answers, self.asked, self.seen = answers, [], []
        self.connected = list(answers) if connected is None else connected
        self.events = Events(None, self.seen.append)

    def get_node_ids(self):
        return list(self.connected)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.asked.append(node)
            msg.metadata.__dict__["_message_id"] = f"hello-{len(self.asked)}"
            reply = Message(self.answers[node], reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = node
            out.append(reply)
        return out


MALFORMED_HELLOS = [
    (RecordDict({}), "no 'identity'"),
    (RecordDict({"config": ConfigRecord({"site": 1})}), "no 'identity'"),
    (_hello_reply(), "'site'"),
    (RecordDict({"identity": ConfigRecord({"site": 1})}), "'sites'"),
    (_hello_reply(site="x"), "'site'"),
    (_hello_reply(site=1.5), "'site'"),
    (_hello_reply(site=True), "'site'"),
    (_hello_reply(site=1, sites=3), "partition 1 of 3"),
    (_hello_reply(site=7), "partition 7 of 2"),
    (_hello_reply(site=1, certificate=5), "certificate"),
    (RecordDict({"status": ConfigRecord({"site": 1, "error": "no key"})}), "no key"),
]


def test_initial_enrolment_names_the_node_whose_hello_is_malformed(monkeypatch):
    # Prepare
    set_task_identity(monkeypatch)
    for bad, reason in MALFORMED_HELLOS:
        grid = HelloGrid({11: _hello_reply(site=0), 22: bad})
        directory = SiteDirectory(Study(num_sites=2))
        # Execute / Assert: an EnrolmentError naming the node and what is wrong
        with pytest.raises(EnrolmentError, match="node 22") as err:
            directory.enrol_all(grid, wait_s=1.0)
        assert reason in str(err.value), (reason, str(err.value))


def test_a_malformed_hello_from_a_node_that_joins_later_is_refused_and_logged(monkeypatch):
    # Prepare: sites 0 and 1 enrolled; node 33 joins and answers nonsense
    set_task_identity(monkeypatch)
    for bad, reason in MALFORMED_HELLOS:
        directory = SiteDirectory(Study(num_sites=2))
        directory.node_site = {11: 0, 22: 1}
        grid = HelloGrid({11: _hello_reply(0), 22: _hello_reply(1), 33: bad})
        # Execute: two rounds' refresh
        directory.refresh(grid)
        directory.refresh(grid)
        # Assert: refused once, with the reason, asked once; the sites keep their nodes
        assert directory.node_site == {11: 0, 22: 1}
        assert grid.asked == [33]
        [event] = grid.seen
        assert event["event"] == "refused" and event["node"] == 33
        assert reason in event["reason"], (reason, event)


def test_a_second_claimant_of_a_connected_site_is_refused_until_that_sites_node_is_gone(
    monkeypatch,
):
    # Prepare: site 1 enrolled from node 22 (with its certificate); node 33 claims site 1
    set_task_identity(monkeypatch)
    directory = SiteDirectory(Study(num_sites=2))
    directory.node_site = {11: 0, 22: 1}
    directory.certificates = {1: b"site-1 certificate"}
    answers = {33: _hello_reply(1, certificate=b"another certificate")}
    grid = HelloGrid(answers, connected=[11, 22, 33])
    # Execute: node 22 still connected
    directory.refresh(grid)
    # Assert: refused and logged; site 1 is still node 22's, its certificate unchanged
    assert directory.node_site == {11: 0, 22: 1}
    assert directory.certificates == {1: b"site-1 certificate"}
    [event] = grid.seen
    assert (event["event"], event["node"], event["site"]) == ("refused", 33, "site-1")
    assert "node 22" in event["reason"] and "still connected" in event["reason"]
    directory.refresh(grid)  # not asked again, not logged again
    assert grid.asked == [33] and len(grid.seen) == 1
    # Execute: node 22 gone (a restarting hospital), node 33 still there
    grid.connected = [11, 33]
    directory.refresh(grid)
    # Assert: node 33 is site 1 now; node 22's late replies are still site 1's
    assert directory.node_site == {11: 0, 33: 1}
    assert directory.site_of(22) == SiteId.site(1)
    assert directory.certificates == {1: b"another certificate"}
    assert grid.asked == [33]


def test_two_new_nodes_claiming_one_missing_site_enrol_only_the_first():
    directory = SiteDirectory(Study(num_sites=2))
    directory.node_site = {11: 0, 22: 1}
    directory._hello = lambda grid, nodes, timeout_s: {33: 1, 44: 1}
    grid = HelloGrid({}, connected=[11, 33, 44])
    directory.refresh(grid)
    assert directory.node_site == {11: 0, 33: 1}
    assert [(e["node"], e["site"]) for e in grid.seen] == [(44, "site-1")]


class ImpostorGrid(LoopbackGrid):
    """A loopback federation that a fourth node joins once round 1 has sent its
    evaluation, claiming to be partition 1 (site-1, whose node is still connected)."""

    IMPOSTOR = FIRST_NODE + 3

    def __init__(self, app, num_nodes: int) -> None:
        super().__init__(app, num_nodes)
        self.evaluates = 0

    def push_messages(self, messages):
        messages = list(messages)
        self.evaluates += sum(m.metadata.message_type == "evaluate" for m in messages)
        if self.evaluates and self.IMPOSTOR not in self.contexts:
            real = self.contexts[FIRST_NODE + 1]
            self.contexts[self.IMPOSTOR] = Context(
                run_id=1,
                node_id=self.IMPOSTOR,
                node_config=dict(real.node_config),
                state=RecordDict(),
                run_config=dict(real.run_config),
            )
        return super().push_messages(messages)


def test_a_node_claiming_an_enrolled_site_cannot_take_its_place_in_a_study(tmp_path, monkeypatch):
    # Prepare
    study = small_study(tmp_path, monkeypatch, num_rounds=2, rejoin_wait=0.0)
    grid = ImpostorGrid(build_client_app(study), 3)
    events: list[dict] = []
    # Execute
    first, second = run_loopback_study(grid, study, Events(None, events.append))
    # Assert: every site trained in both rounds from its own node; the impostor was refused
    for record in (first, second):
        assert [(s.site, s.ok) for s in record.sites] == [(f"site-{i}", True) for i in range(3)]
    trained = [m.metadata.dst_node_id for m in grid.delivered if m.metadata.message_type == "train"]
    assert ImpostorGrid.IMPOSTOR not in trained and trained.count(FIRST_NODE + 1) == 2
    refused = [e for e in events if e["event"] == "refused"]
    assert [(e["node"], e["site"]) for e in refused] == [(ImpostorGrid.IMPOSTOR, "site-1")]


def test_a_node_that_never_answers_its_hello_costs_a_round_a_bounded_wait(monkeypatch):
    # Prepare: node 33 connects and never answers (a hostile or broken SuperNode)
    set_task_identity(monkeypatch)
    directory = SiteDirectory(Study(num_sites=2, round_timeout=3600.0))
    directory.node_site = {11: 0, 22: 1}
    grid = HelloGrid({}, connected=[11, 22, 33])
    waits = []

    def silent(messages, *, timeout=None):
        waits.append(timeout)
        grid.asked += [m.metadata.dst_node_id for m in messages]
        return []

    grid.send_and_receive = silent
    # Execute: rounds' refreshes, then again once the retry interval has passed
    directory.refresh(grid)
    directory.refresh(grid)
    monkeypatch.setattr("server.enrolment.HELLO_RETRY_S", 0.0)
    directory.refresh(grid)
    # Assert: asked twice in all, each time waiting at most HELLO_WAIT_S, not round-timeout
    from server.enrolment import HELLO_WAIT_S

    assert grid.asked == [33, 33] and waits == [HELLO_WAIT_S, HELLO_WAIT_S]
    assert directory.node_site == {11: 0, 22: 1}
