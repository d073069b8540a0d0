"""Started processes and their children: ports, the process tree, stopping them all.

Linux /proc is read for the process tree (no psutil dependency); elsewhere
only process groups are used.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when a program listens on (or holds) the port. SO_REUSEADDR, as the
    SuperLink and SuperNodes bind, so that the connections of a federation
    stopped a moment ago (TIME_WAIT) do not count as "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def children_by_parent() -> dict[int, list[int]]:
    """ppid -> pids, read from /proc (Linux; elsewhere only process groups are used)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, also those that left its process group.

    flower-superlink starts flower-superexec in a new session, and SuperExec
    starts one app process per run or message: a process-group signal alone
    would miss them. (No psutil dependency: /proc is enough here.)
    """
    if not Path("/proc").is_dir():
        return []
    tree, out, todo = children_by_parent(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_time(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot): tells a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Component:
    """One started process: a name for messages, its log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def stop_processes(
    procs: list[subprocess.Popen], seen: dict[int, int | None], grace_s: float = 10.0
) -> None:
    """SIGTERM `procs` (each its own process group) and every descendant, SIGKILL after `grace_s`.

    `seen` (pid -> start time) holds descendants recorded earlier: those whose
    parent already died are stopped too, unless the pid was reused since.
    """
    pids = [p for p, t in seen.items() if t is not None and start_time(p) == t]
    for proc in reversed(procs):
        pids += descendants(proc.pid)
    pids = [p for p in dict.fromkeys(pids) if p != os.getpid()]
    for proc in reversed(procs):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
