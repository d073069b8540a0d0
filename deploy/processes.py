"""Started processes and their children: ports, the process tree, stopping them all.

Linux /proc is read for the process tree (no psutil dependency); elsewhere
only process groups are used.

Three layers make sure a deployment leaves nothing running, even when its
launcher is killed with SIGKILL (no `finally`, no atexit, no signal handler
runs then): every process is started with a parent-death signal (Linux
`PR_SET_PDEATHSIG`: SIGTERM when the process that started it dies); every
process started or seen is in `pids.json` with its start time; and the next
start reads that file and stops what still runs of it (`stop_leftovers`),
only where the pid still belongs to the process recorded there.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# what a process medfed started runs: the leftovers of an earlier start are stopped
# only when their command line is one of these (and their start time the one recorded)
OWN_COMMANDS = ("flwr", "flower-", "simulations.", "medfed")


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


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send `sig` to the child when its parent dies
    (Linux `prctl(PR_SET_PDEATHSIG)`), so that a launcher killed with SIGKILL leaves
    no process behind; None elsewhere, and outside the main thread (the signal comes
    when the *thread* that started the child ends)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was set
            os.kill(os.getpid(), sig)

    return preexec


def cmdline(pid: int) -> str:
    """A process's command line ("" when it is gone or unreadable)."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def read_pids(pids_file: Path) -> dict[int, int | None]:
    """pids.json (pid -> start time); {} when missing or unreadable."""
    try:
        doc = json.loads(Path(pids_file).read_text())
        return {int(pid): (None if t is None else int(t)) for pid, t in doc.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def still_ours(pid: int, started: int | None) -> bool:
    """The process `pid` is the one recorded: it runs, it started at the recorded
    time (a reused pid started later), and its command is one medfed starts."""
    if started is None or pid == os.getpid() or start_time(pid) != started or not alive(pid):
        return False
    return any(word in cmdline(pid) for word in OWN_COMMANDS)


def stop_leftovers(pids_file: Path, grace_s: float = 10.0) -> list[int]:
    """Stop what an earlier deployment left running: the processes of `pids_file`
    that are still the ones recorded there (`still_ours`), SIGTERM first, SIGKILL
    after `grace_s`; wait until they are gone (their ports free). Returns their pids."""
    found = {pid: t for pid, t in read_pids(pids_file).items() if still_ours(pid, t)}
    pids = list(found)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if still_ours(pid, found[pid]):  # checked again: never a pid reused meanwhile
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


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
