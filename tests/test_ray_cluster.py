"""`ray-address`: a study runs its sites on an existing Ray cluster (here a
one-node cluster started with `ray start --head`, as a user would)."""

from __future__ import annotations

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

from simulations.runner import run_simulated_study
from study.config import Study


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
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-f", str(temp)], check=False)
        shutil.rmtree(temp, ignore_errors=True)


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
