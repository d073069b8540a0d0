"""simulations/deploy/supernode.py: flower-supernode with a shorter idle wait."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from simulations.deploy import supernode


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
        "simulations.deploy.supernode",
        "--insecure",
    ]
    assert supernode.supernode_command(["other", "--a"]) == ["other", "--a"]
    for bad in ("0", "nan", "5", "x"):
        res = subprocess.run(
            [sys.executable, "-m", "simulations.deploy.supernode", "--help"],
            env={"MEDFED_SUPERNODE_IDLE_S": bad, "PATH": ""},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode != 0 and "MEDFED_SUPERNODE_IDLE_S" in res.stderr, bad
    res = subprocess.run(
        [sys.executable, "-m", "simulations.deploy.supernode", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "--superlink" in res.stdout


@pytest.fixture(autouse=True)
def _restore_loop_time():
    from flwr.supernode import start_client_internal as loop

    before = loop.time, loop.pull_objects
    yield
    loop.time, loop.pull_objects = before
