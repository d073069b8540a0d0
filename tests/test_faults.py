"""Fault injection (`fault-sites`, client/faults.py) acts only where the hospital's own
code asks for it: the simulation and the tests (an app built with the study in hand) or a
node config with `allow-fault-injection=true`. A deployed hospital ignores every fault
setting the server sends in the run config: it neither raises, sleeps, exits nor sends NaN."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from loopback_grid import LoopbackGrid, run_loopback_study, set_task_identity, small_study

from client import faults
from client.client_app import app as deployed_app
from client.client_app import build_client_app
from study import transport
from study.config import Study
from study.task import build_model

# one fault of each kind, all in round 1: site 0 raises, site 1 stalls 1234 s,
# site 2's process dies, site 3 sends NaN
EVERY_FAULT = "0:round=1, 1:round=1:stall=1234, 2:round=1:crash, 3:round=1:nan"


class Exited(RuntimeError):
    """What the patched os._exit raises (the real one would end pytest): the site's
    reply mod reports it as the site's error."""


@pytest.fixture
def no_sleep_no_exit(monkeypatch):
    """Sleeps are recorded, not slept; os._exit raises Exited instead of ending pytest."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)

    def exit_(code):
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", exit_)
    return slept


def recorded(grid: LoopbackGrid) -> dict[int, RecordDict]:
    """The train replies the grid's app sends, by site, copied as they leave the app
    (unpacked: the server packs what it sends, and the site its reply)."""
    app, replies = grid.app, {}

    def call(msg: Message, context: Context) -> Message:
        reply = app(msg, context)
        if msg.metadata.message_type == "train":
            content = message_from_proto(message_to_proto(reply)).content
            content = transport.unpack(content) if transport.is_packed(content) else content
            replies[int(context.node_config["partition-id"])] = content
        return reply

    grid.app = call
    return replies


def _four_sites(tmp_path, monkeypatch) -> Study:
    return small_study(tmp_path, monkeypatch, num_sites=4, min_sites=1, fault_sites=EVERY_FAULT)


def test_a_deployed_hospital_ignores_the_fault_settings_the_server_sends(
    tmp_path, monkeypatch, no_sleep_no_exit
):
    # Prepare: the ClientApp a SuperNode loads (client.client_app:app, the study read
    # from the run config the server sends), which names a fault for every site
    study = _four_sites(tmp_path, monkeypatch)
    grid = LoopbackGrid(deployed_app, study.num_sites, run_config=study.to_run_config())
    replies = recorded(grid)
    # Execute
    rounds = run_loopback_study(grid, study)
    # Assert: every site trained normally: no error, no stall, no exit, a finite update
    sites = {s.site: s for s in rounds[0].sites}
    assert sorted(sites) == ["site-0", "site-1", "site-2", "site-3"]
    assert all(s.ok and s.error is None for s in sites.values()), sites
    assert 1234 not in no_sleep_no_exit
    assert sorted(replies) == [0, 1, 2, 3]
    for content in replies.values():
        assert "error" not in content["status"]
        assert all(np.isfinite(a.numpy()).all() for a in content["arrays"].values())


def test_a_hospital_that_opts_in_gets_the_faults(tmp_path, monkeypatch, no_sleep_no_exit):
    # Prepare: the deployed app; sites 0 and 1 opt in by their own node config
    study = _four_sites(tmp_path, monkeypatch)
    grid = LoopbackGrid(deployed_app, study.num_sites, run_config=study.to_run_config())
    for node in list(grid.contexts)[:2]:
        grid.contexts[node].node_config[faults.ALLOW_FAULT_INJECTION] = True
    # Execute
    rounds = run_loopback_study(grid, study)
    # Assert: site 0 raised, site 1 stalled; sites 2 and 3 (no opt-in) trained normally
    sites = {s.site: s for s in rounds[0].sites}
    assert "InjectedFault: site 0: injected fault in round 1" in sites["site-0"].error
    assert sites["site-1"].ok and 1234.0 in no_sleep_no_exit
    assert sites["site-2"].ok and sites["site-3"].ok


def test_a_malformed_opt_in_is_an_error_naming_the_node_config_key(tmp_path, monkeypatch):
    study = small_study(tmp_path, monkeypatch, num_sites=2, min_sites=1)
    grid = LoopbackGrid(deployed_app, study.num_sites, run_config=study.to_run_config())
    grid.contexts[list(grid.contexts)[0]].node_config[faults.ALLOW_FAULT_INJECTION] = "yes"
    rounds = run_loopback_study(grid, study)
    sites = {s.site: s for s in rounds[0].sites}
    assert "allow-fault-injection = 'yes' must be true or false" in sites["site-0"].error
    assert sites["site-1"].ok


def test_the_simulation_app_injects_every_kind(tmp_path, monkeypatch, no_sleep_no_exit):
    # Prepare: the app as `medfed run` and the tests build it (the study in hand)
    study = _four_sites(tmp_path, monkeypatch)
    grid = LoopbackGrid(build_client_app(study), study.num_sites)
    replies = recorded(grid)
    # Execute: site 3's NaN update makes the global model NaN, which stops the study
    with pytest.raises(Exception, match="training diverged in round 1"):
        run_loopback_study(grid, study)
    # Assert: each site's train reply shows the fault fault-sites planned for it
    errors = {site: content["status"].get("error") for site, content in replies.items()}
    assert "InjectedFault: site 0: injected fault in round 1" in errors[0]
    assert "fault-sites = " in errors[0]
    assert errors[1] is None and 1234.0 in no_sleep_no_exit  # stalled, then answered
    assert "Exited: 70" in errors[2]  # os._exit(70) was called
    assert errors[3] is None
    assert any(np.isnan(a.numpy()).all() for a in replies[3]["arrays"].values())


def test_an_app_built_without_faults_ignores_them(tmp_path, monkeypatch, no_sleep_no_exit):
    study = small_study(tmp_path, monkeypatch, num_sites=2, min_sites=2, fault_sites="0:round=1")
    grid = LoopbackGrid(build_client_app(study, inject_faults=False), study.num_sites)
    rounds = run_loopback_study(grid, study)
    assert all(s.ok for s in rounds[0].sites)


def _train_message(server_round: int) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord(), "config": ConfigRecord({"server-round": server_round})}
    )
    return Message(content, dst_node_id=1, message_type="train")


def _context(site: int) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": site, "num-partitions": 4},
        state=RecordDict(),
        run_config={},
    )


def test_nan_fault_makes_every_parameter_nan_and_keeps_buffers(monkeypatch):
    # Prepare: a reply holding the study's model and a buffer
    set_task_identity(monkeypatch)
    study = Study(num_sites=4, fault_sites="3:round=2:nan")
    model = build_model(study.modality)
    state = model.state_dict()
    parameters = {name for name, _ in model.named_parameters()}
    state["norm.running_mean"] = torch.ones(3)  # a buffer (medfed's models have none yet)
    buffers = [name for name in state if name not in parameters]

    def handler(msg, context):
        return Message(RecordDict({"arrays": ArrayRecord(state)}), reply_to=msg)

    # Execute: round 1 (not planned) and round 2 (planned)
    before = faults.fault_mod(_train_message(1), _context(3), handler, study)
    after = faults.fault_mod(_train_message(2), _context(3), handler, study)
    # Assert
    assert all(np.isfinite(a.numpy()).all() for a in before.content["arrays"].values())
    arrays = after.content["arrays"]
    assert list(arrays.keys()) == list(state)
    assert all(np.isnan(arrays[name].numpy()).all() for name in parameters)
    assert buffers and all(
        np.array_equal(arrays[name].numpy(), state[name].numpy()) for name in buffers
    )


def test_planned_fault_names_only_its_site_and_round():
    study = Study(num_sites=4, fault_sites="1:round=2, 3")
    assert faults.planned_fault(study, 1, 2).kind == "raise"
    assert faults.planned_fault(study, 1, 3) is None
    assert faults.planned_fault(study, 0, 2) is None
    assert faults.planned_fault(study, 3, 7) is not None  # every round


@pytest.mark.parametrize(
    ("config", "allowed"),
    [
        ({}, False),
        ({"allow-fault-injection": False}, False),
        ({"allow-fault-injection": True}, True),
    ],
)
def test_node_allows_faults(config, allowed):
    assert faults.node_allows_faults(config) is allowed


def test_fault_mod_sends_an_unplanned_message_straight_through(monkeypatch):
    set_task_identity(monkeypatch)
    study = Study(num_sites=4, fault_sites="0:round=1")
    seen = []

    def handler(msg, context):
        seen.append(msg)
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(2))})}), reply_to=msg)

    msg = _train_message(1)
    faults.fault_mod(msg, _context(1), handler, study)  # site 1: nothing planned
    assert seen == [msg]
