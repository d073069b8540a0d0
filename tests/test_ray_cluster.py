"""`ray-address`: a study runs its sites on an existing Ray cluster (here a
one-node cluster started with `ray start --head`, as a user would)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from deploy.processes import alive, descendants, start_time, stop_processes
from simulations.runner import run_simulated_study
from study.config import Study

pytestmark = pytest.mark.federation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head node in its own process group and temp dir (short: Ray's
    socket paths must fit 107 bytes); stopping it touches no other cluster."""
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        pytest.skip("the ray command is not installed next to this Python")
    temp = Path(tempfile.mkdtemp(prefix="mfray", dir="/tmp"))
    port = _free_port()
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not list(temp.glob("session_*/logs/raylet.out")):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"ray start --head did not come up (exit {proc.poll()})")
        time.sleep(0.5)
    _wait_for_raylet(ray, address, deadline)
    try:
        yield address, temp
    finally:
        _stop_cluster(proc, temp)


def _stop_cluster(head: subprocess.Popen, temp: Path) -> None:
    """Stop the head and every process it started, by their PIDs: recorded (with
    their start times, so that a reused PID is left alone) while they are still its
    descendants, then SIGTERM, SIGKILL after 30 s. A process of this cluster (its
    command names `temp`) that escaped the head's process tree fails the test (it is
    not stopped by its name: the test says which PIDs it did not start)."""
    started = {pid: start_time(pid) for pid in descendants(head.pid)}
    stop_processes([head], started, grace_s=30)
    left = [p for p, t in started.items() if t is not None and start_time(p) == t and alive(p)]
    escaped = [p for p in _pids_naming(str(temp)) if p not in started]
    shutil.rmtree(temp, ignore_errors=True)
    assert left == [], f"Ray processes still running after SIGKILL: {left}"
    assert escaped == [], f"Ray processes outside the head's process tree: {escaped}"


def _pids_naming(text: str) -> list[int]:
    """The running processes whose command line contains `text` (from /proc)."""
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace"
            ) and alive(int(entry.name)):
                out.append(int(entry.name))
    return out


def test_study_runs_on_an_existing_ray_cluster(ray_head, tmp_path):
    address, temp = ray_head
    study = Study(
        name="on-cluster",
        num_sites=2,
        num_rounds=2,
        min_sites=2,
        image_size=32,
        phantom_patients=40,
        phantom_size=64,
        share_per_round=4,
        holdout_images=16,
        ray_address=address,
        out_dir=str(tmp_path / "run"),
    )
    study.validate()

    summary = run_simulated_study(study).summary

    assert summary.status == "complete" and summary.rounds == 2
    assert summary.bytes_per_site["site-0"]["rounds_ok"] == 2
    # the sites ran as workers of that cluster, driven by this process as a job
    logs = next(temp.glob("session_*/logs"))
    assert list(logs.glob("python-core-driver-*")), sorted(p.name for p in logs.iterdir())
    assert len(list(logs.glob("python-core-worker-*"))) >= 1


def _wait_for_raylet(ray, address: str, deadline: float) -> None:
    """Until the cluster reports a node with CPUs (the raylet has registered
    with the GCS), within the deadline: `ray status` answers then."""
    while time.monotonic() < deadline:
        res = subprocess.run(
            [str(ray), "status", f"--address={address}"], capture_output=True, text=True
        )
        if res.returncode == 0 and "CPU" in res.stdout:
            return
        time.sleep(0.5)
    pytest.fail(f"the Ray cluster at {address} reported no node within the deadline")
