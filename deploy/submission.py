"""Submitting a study with `flwr run` and waiting for its results (summary.json)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deploy.app import default_app_dir, stage_app
from deploy.diagnosis import ANSI
from deploy.errors import ENV, DeployError
from deploy.processes import parent_death_signal
from server.progress import EventFollower
from study.config import Study
from study.schema import read_summary


def run_config_toml(study: Study) -> str:
    """The study as a `flwr run --run-config FILE` TOML (every key of [tool.flwr.app.config])."""
    lines = []
    for key, value in study.to_run_config().items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)  # a TOML basic string
        elif isinstance(value, float):
            text = repr(value) if value == value and abs(value) != float("inf") else '"nan"'
        else:
            text = str(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def flwr_run_argv(flwr: str, app: Path, connection: str, run_config: Path) -> list[str]:
    """The `flwr run` command line a study is submitted with (flags checked by the tests)."""
    return [flwr, "run", str(app), connection, "--run-config", str(run_config), "--stream"]


@dataclass
class Submission:
    """What `flwr run` said and where the results are."""

    run_id: int | None
    returncode: int
    output: str
    summary: dict = field(default_factory=dict)


def submit_study(
    study: Study,
    *,
    flwr_home: Path,
    connection: str,
    app_dir: str | Path | None = None,
    work: Path,
    env: dict[str, str] | None = None,
    watch: Callable[[], None] | None = None,
    progress: Callable[[dict], None] | None = None,
    timeout: float = 3600.0,
    flwr: str = "flwr",
    log: Path | None = None,
    started: Callable[[int], None] | None = None,
) -> Submission:
    """`flwr run <staged app> <connection> --run-config <study> --stream`; wait for summary.json.

    `watch` is called about every 0.2 s and may raise (a component died);
    `progress` gets every progress event the ServerApp writes to events.jsonl
    (server.progress: the same events a simulated study gives its listener);
    `started` gets the pid of `flwr run` (LocalFederation records it in pids.json).
    """
    out = Path(study.out_dir)
    if not out.is_absolute():
        raise ValueError(f"out-dir = {study.out_dir!r}: must be absolute for a deployment")
    app = stage_app(app_dir or default_app_dir(), work / "app")
    cfg = work / "run-config.toml"
    cfg.write_text(run_config_toml(study))
    events = EventFollower(out / "events.jsonl")
    env = dict(env or os.environ)
    env.update(ENV)
    env["FLWR_HOME"] = str(flwr_home)
    log = log or work / "flwr-run.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            flwr_run_argv(flwr, app, connection, cfg),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(work),
            start_new_session=True,
            preexec_fn=parent_death_signal(),
        )
    if started is not None:
        started(proc.pid)
    deadline = time.monotonic() + timeout
    finished = False  # this submission's study ended ("done" event), not an earlier one
    try:
        while True:
            done = proc.poll() is not None
            for event in events.poll():
                finished = finished or event.get("event") == "done"
                if progress:
                    progress(event)
            if done:
                break
            if watch:
                watch()
            if time.monotonic() > deadline:
                raise DeployError(
                    f"flwr run: the study did not finish within {timeout:.0f} s (log: {log})"
                )
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
    output = ANSI.sub("", log.read_text(errors="replace"))
    match = re.search(r"started run (\d+)", output)
    sub = Submission(int(match.group(1)) if match else None, proc.returncode, output)
    summary = read_summary(out) if (out / "summary.json").is_file() else None
    if summary is not None:
        sub.summary = summary.to_json()
    if not finished or sub.summary.get("status") != "complete":
        tail = [ln for ln in output.splitlines() if ln.strip()][-12:]
        why = "the run was not accepted" if sub.run_id is None else f"run {sub.run_id} ended"
        status = sub.summary.get("status", "no summary.json")
        raise DeployError(
            f"ServerApp: {why} without a complete study ({status}) in {out}; "
            "flwr run said:\n  " + "\n  ".join(tail)
        )
    return sub
