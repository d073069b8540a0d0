"""deploy/supervisor.py: processes started, watched, started again and stopped, with
no Flower in sight (plain Python children: fast)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from deploy.errors import DeployError
from deploy.processes import alive, start_time
from deploy.supervisor import Restart, Supervisor, last_line

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"]


def _supervisor(tmp_path: Path, said: list[str], **kw) -> Supervisor:
    return Supervisor(
        tmp_path / "logs", env=lambda home: {**os.environ, "HOME_OF": str(home)},
        echo=said.append, **kw,
    )  # fmt: skip


def _kill(sup: Supervisor, name: str) -> int:
    (comp,) = [c for c in sup.components if c.name == name]
    os.kill(comp.proc.pid, signal.SIGKILL)
    comp.proc.wait(timeout=30)
    return comp.proc.pid


def _wait_for_log(sup: Supervisor, name: str, text: str) -> None:
    (comp,) = [c for c in sup.components if c.name == name]
    deadline = time.monotonic() + 30
    while text not in comp.log_text():
        assert time.monotonic() < deadline, comp.log_text()
        time.sleep(0.05)


def test_every_process_is_recorded_and_stopped_with_its_children(tmp_path):
    cleaned: list[bool] = []
    said: list[str] = []
    parent = [sys.executable, "-c", (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "print('child started', flush=True); time.sleep(120)")]  # fmt: skip
    with _supervisor(tmp_path, said, cleanup=lambda: cleaned.append(True)) as sup:
        a = sup.start("Worker one", SLEEPER, tmp_path / "a")
        b = sup.start("Parent", parent, tmp_path / "b")
        _wait_for_log(sup, "Parent", "child started")
        sup.check_alive()  # all running: no error
        sup.note_descendants()
        recorded = {
            int(p): t for p, t in json.loads((sup.log_dir / "pids.json").read_text()).items()
        }
        running = sup.pids()
        assert a.log == tmp_path / "logs" / "worker-one.log"
        assert {a.proc.pid, b.proc.pid} < set(recorded) and len(running) == 3
        assert all(recorded[p] == start_time(p) for p in running)
    assert sup.pids() == [] and not any(alive(p) for p in running)
    assert cleaned == [True]
    sup.stop()  # idempotent: cleanup ran once
    assert cleaned == [True] and said == []


def test_a_component_with_a_policy_is_started_again_until_the_limit(tmp_path):
    said: list[str] = []
    policy = Restart(argv=lambda: SLEEPER, note="the rest goes on")
    with _supervisor(tmp_path, said, restart_limit=2, restart_window_s=300) as sup:
        sup.start("Worker one", SLEEPER, tmp_path / "a", restart=policy)
        _wait_for_log(sup, "Worker one", "up")
        old = _kill(sup, "Worker one")
        sup.keep_alive()
        comp = sup.components[0]
        assert comp.proc.pid != old and not comp.exited()
        assert said == [
            "Worker one was killed by signal SIGKILL from outside medfed; starting it again "
            "(the rest goes on)"
        ]
        _wait_for_log(sup, "Worker one", "--- medfed: Worker one started again ---\nup")
        _kill(sup, "Worker one")
        sup.keep_alive()  # the second restart within the window: still allowed
        _wait_for_log(
            sup, "Worker one", "again ---\nup\n\n--- medfed: Worker one started again ---\nup"
        )
        _kill(sup, "Worker one")
        with pytest.raises(DeployError) as err:
            sup.keep_alive()
    assert str(err.value).startswith(
        "Worker one was killed by signal SIGKILL from outside medfed (3 times within 300 s); "
        "not started again: up (full log: "
    )


def test_a_restart_waits_for_its_delay(tmp_path):
    said: list[str] = []
    policy = Restart(argv=lambda: SLEEPER, delay_s=60, delay_reason="once it is forgotten")
    with _supervisor(tmp_path, said) as sup:
        sup.start("Node", SLEEPER, tmp_path / "n", restart=policy)
        old = _kill(sup, "Node")
        sup.keep_alive()
        sup.keep_alive()  # said once, not started yet
        assert said == [
            "Node was killed by signal SIGKILL from outside medfed; starting it again in "
            "60 s, once it is forgotten"
        ]
        assert sup.components[0].proc.pid == old


@pytest.mark.parametrize("restart", [True, False])
def test_a_component_that_may_not_restart_stops_the_deployment(tmp_path, restart):
    said: list[str] = []
    exits = [sys.executable, "-c", "print('first'); print('the cause'); raise SystemExit(3)"]
    policy = Restart(argv=lambda: SLEEPER) if not restart else None
    with _supervisor(tmp_path, said, restart=restart) as sup:
        comp = sup.start("Link", exits, tmp_path / "l", restart=policy)
        comp.proc.wait(timeout=30)
        with pytest.raises(DeployError, match=r"^Link stopped \(exit 3\): the cause \(full log"):
            sup.keep_alive()
    assert said == []


def test_the_environment_and_folder_of_each_component(tmp_path):
    show = [sys.executable, "-c", "import os; print(os.environ['HOME_OF'], os.getcwd())"]
    with _supervisor(tmp_path, []) as sup:
        comp = sup.start("Show", show, tmp_path / "home")
        comp.proc.wait(timeout=30)
    assert comp.log_text().split() == [str(tmp_path / "home")] * 2


def test_last_line_describes_a_log():
    assert last_line("a\nb\n\n") == "b" and last_line("") == "no output"
