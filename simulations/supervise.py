"""Run a simulated study in a child process that can always be stopped.

`medfed run` and `medfed sweep` run each study here. Why a child process:
Flower's simulation runs the ServerApp in a thread and Ray in processes of
its own, and neither ends on KeyboardInterrupt (a study hung after printing
"interrupted"). So the whole simulation lives in a child, in a session of its
own; this process follows the study's events.jsonl for progress (the same
protocol `medfed deploy` follows) and receives the outcome through a pipe.
Ctrl-C (SIGINT) or SIGTERM stops the child and every process it started
(Ray's included) within seconds, and `--resume` continues from the last
complete round: every round is on disk with its checkpoint when it ends.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path

from server.progress import EventFollower, Listener
from study.config import Study

GRACE_S = 4.0  # after SIGTERM, before SIGKILL


class StudyFailed(RuntimeError):
    """The study ended with an error; the message says what, in one line."""


def run_study_process(study: Study, listener: Listener | None = None):
    """The study's StudyResult, computed in a child process (see the module)."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    follower = EventFollower(Path(study.out_dir) / "events.jsonl")
    child = ctx.Process(target=_child, args=(study, send), name="medfed-study")
    previous = _raise_on(signal.SIGTERM)
    tree = ProcessTree()
    try:
        child.start()
        send.close()
        message = None
        while message is None:
            tree.look(child.pid)
            for event in follower.poll():
                if listener:
                    listener(event)
            if receive.poll(0.2):
                message = receive.recv()
            elif not child.is_alive():
                message = ("error", f"the study process ended unexpectedly (exit {child.exitcode})")
        child.join(timeout=30)
        for event in follower.poll():  # the events written before the result
            if listener:
                listener(event)
    finally:
        tree.look(child.pid)
        tree.stop()
        signal.signal(signal.SIGTERM, previous)
    kind, payload = message
    if kind == "error":
        raise StudyFailed(payload)
    return payload


def _raise_on(signum: int) -> Callable | int | None:
    def handler(sig, frame):
        raise KeyboardInterrupt(f"signal {sig}")

    return signal.signal(signum, handler)


def _child(study: Study, send) -> None:
    os.setsid()  # the terminal's Ctrl-C reaches the parent, which stops this tree
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from simulations.runner import run_simulated_study

    try:
        result = run_simulated_study(study)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        send.send(("error", explain(exc)))
    else:
        send.send(("ok", result))
    finally:
        send.close()


def explain(exc: BaseException) -> str:
    """One line for the deepest cause that says what went wrong: medfed's own
    errors first (a stopped study, a refused checkpoint, a bad setting), then
    a file-system error, else the innermost exception."""
    from server.checkpoint import CheckpointError
    from server.enrolment import EnrolmentError
    from server.strategy import StudyStopped
    from study.schema import SchemaError

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    ours = (StudyStopped, CheckpointError, EnrolmentError, SchemaError, ValueError)
    for kinds in (ours, OSError):
        for e in reversed(chain):
            if isinstance(e, kinds):
                return _line(e)
    return _line(chain[-1])


def _line(e: BaseException) -> str:
    from simulations.preflight import describe_os_error

    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        hint = "; free some space, then continue with --resume" if e.errno == errno.ENOSPC else ""
        return f"{describe_os_error(e)}{where}{hint}"
    text = str(e) or type(e).__name__
    return text if isinstance(e, ValueError | RuntimeError) else f"{type(e).__name__}: {text}"


class ProcessTree:
    """Every process seen below a pid (Ray's included), to stop them all at the
    end even when some were reparented after their parent ended."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}  # pid -> create time

    def look(self, pid: int | None) -> None:
        import psutil

        if pid is None:
            return
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.seen.setdefault(proc.pid, proc.create_time())

    def alive(self) -> list:
        import psutil

        out = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
        return out

    def stop(self, grace_s: float = GRACE_S) -> None:
        """SIGTERM every process still alive, then SIGKILL what is left after grace_s."""
        import psutil

        procs = self.alive()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        _, left = psutil.wait_procs(procs, timeout=grace_s)
        for proc in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(left, timeout=grace_s)
