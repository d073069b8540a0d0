"""`Supervisor`: processes started, logged, watched, started again and stopped together.

It knows nothing of what it runs (deploy/federation.py says what: a SuperLink,
SuperNodes, executors). Each process (a `Component`) runs in its own process
group, its output in `<log dir>/<name>.log`, with a parent-death signal; every
process started or seen below one is recorded in `<log dir>/pids.json` with
its start time. Leaving the `with` block stops them all, whatever happened,
and so do atexit and SIGTERM/SIGHUP while it runs (deploy/processes.py: the
three layers). Entering it first stops what a killed earlier supervisor with
the same log folder left running.

A component started with a `Restart` policy that stops is started again by
`keep_alive` (after the policy's delay), at most `restart_limit` times within
`restart_window_s`; then, or for a component without a policy, or with
restarts off, `keep_alive` raises DeployError naming the component and why it
stopped (`describe` turns its log into a one-line cause).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import DeployError
from deploy.processes import (
    Component,
    alive,
    descendants,
    parent_death_signal,
    start_time,
    stop_leftovers,
    stop_processes,
)


def last_line(log_text: str) -> str:
    """The default `describe`: the last line a component wrote."""
    lines = log_text.strip().splitlines()
    return lines[-1] if lines else "no output"


@dataclass(frozen=True)
class Restart:
    """How a component that stopped is started again by `Supervisor.keep_alive`."""

    argv: Callable[[], list[str]]  # its command line then
    delay_s: float = 0.0  # wait this long after it stopped ...
    delay_reason: str = ""  # ... because of this (said when it stopped)
    note: str = ""  # what its stopping means, said in parentheses


class Supervisor:
    """The processes of one deployment; a context manager (see the module docstring)."""

    def __init__(
        self,
        log_dir: str | Path,
        *,
        env: Callable[[Path], dict[str, str]],
        echo: Callable[[str], None] = print,
        describe: Callable[[str], str] = last_line,
        restart: bool = True,
        restart_limit: int = 3,
        restart_window_s: float = 300.0,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env, self.echo, self.describe = env, echo, describe
        self.restart = restart  # start a component with a Restart policy again when it stops
        self.restart_limit, self.restart_window_s = restart_limit, restart_window_s
        self.cleanup = cleanup  # run once every process is stopped
        self.components: list[Component] = []
        self._policies: dict[str, Restart] = {}  # component name -> how to start it again
        self._homes: dict[str, Path] = {}  # component name -> its working folder
        self._old_handlers: dict[int, object] = {}
        self._stopped = False
        self._seen: dict[int, int | None] = {}  # every descendant seen: pid -> start time
        self._restarts: dict[str, list[float]] = {}  # component name -> restart times
        self._due: dict[str, float] = {}  # component name -> when to start it again

    # -- starting ---------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name.lower().replace(' ', '-')}.log"

    def start(
        self,
        name: str,
        argv: list[str],
        home: Path,
        *,
        restart: Restart | None = None,
        replace: Component | None = None,
    ) -> Component:
        """Start `argv` as component `name` in folder `home` (with `env(home)`; its own
        process group; SIGTERM when this process dies); `replace`: the stopped component
        it takes the place of (its log is appended to)."""
        home.mkdir(parents=True, exist_ok=True)
        log = self.log_path(name)
        fh = open(log, "ab" if replace else "wb")  # noqa: SIM115 - closed below; the child keeps it
        if replace is not None:
            fh.write(f"\n--- medfed: {name} started again ---\n".encode())
            fh.flush()
        proc = subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(home),
            cwd=str(home),
            start_new_session=True,
            preexec_fn=parent_death_signal(),
        )
        fh.close()
        comp = Component(name, proc, log)
        if replace is not None:
            self.components[self.components.index(replace)] = comp
        else:
            self.components.append(comp)
        self._homes[name] = home
        if restart is not None:
            self._policies[name] = restart
        else:
            self._policies.pop(name, None)
        self.track(proc.pid)
        return comp

    def track(self, pid: int) -> None:
        """Record a process started for this deployment elsewhere (pids.json)."""
        self._seen.setdefault(pid, start_time(pid))
        self._write_pids()

    def _write_pids(self) -> None:
        """<log dir>/pids.json: every process started or seen (pid -> start time), for checks."""
        doc = {str(p): t for p, t in self._seen.items()}
        with contextlib.suppress(OSError):
            (self.log_dir / "pids.json").write_text(json.dumps(doc))

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> Supervisor:
        self.stop_leftovers()
        atexit.register(self.stop)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _on_signal(self, signum, frame) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def stop_leftovers(self) -> list[int]:
        """Stop what a supervisor with this log folder left running when it was killed
        (SIGKILL: it could not clean up): the processes its pids.json names that still
        run with the recorded start time and a command medfed starts."""
        pids = stop_leftovers(self.log_dir / "pids.json")
        if pids:
            self.echo(
                f"stopped {len(pids)} process(es) an earlier deployment in {self.log_dir} "
                f"left running (pids {', '.join(map(str, pids))})"
            )
        return pids

    def stop(self) -> None:
        """Stop every process started here (and their children); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)
        stop_processes([c.proc for c in self.components], self._seen)
        if self.cleanup is not None:
            self.cleanup()
        atexit.unregister(self.stop)

    # -- watching -----------------------------------------------------------------------
    def note_descendants(self) -> None:
        """Record every process now below a component (pids.json), to stop them later."""
        before = len(self._seen)
        for comp in self.components:
            for pid in descendants(comp.proc.pid):
                self._seen.setdefault(pid, start_time(pid))
        if len(self._seen) != before:
            self._write_pids()

    @staticmethod
    def how(comp: Component) -> str:
        """How a stopped component stopped, for messages."""
        code = comp.proc.returncode
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name} from outside medfed"
        return f"stopped (exit {code})"

    def check_alive(self) -> None:
        """Raise DeployError naming the first component that stopped, and why."""
        self.note_descendants()
        for comp in self.components:
            if comp.exited():
                raise DeployError(
                    f"{comp.name} {self.how(comp)}: {self.describe(comp.log_text())} "
                    f"(full log: {comp.log})"
                )

    def keep_alive(self) -> None:
        """The watch while a deployment runs: a stopped component with a Restart policy is
        started again; DeployError when one without stopped, when restarts are off, or when
        one keeps stopping (see the module docstring)."""
        self.note_descendants()
        for comp in list(self.components):
            if not comp.exited():
                continue
            policy = self._policies.get(comp.name)
            if policy is None or not self.restart:
                self.check_alive()
                continue  # (check_alive raises: comp has stopped)
            now = time.monotonic()
            window = self.restart_window_s
            times = [t for t in self._restarts.get(comp.name, []) if now - t < window]
            if len(times) >= self.restart_limit:
                raise DeployError(
                    f"{comp.name} {self.how(comp)} ({len(times) + 1} times within "
                    f"{window:.0f} s); not started again: "
                    f"{self.describe(comp.log_text())} (full log: {comp.log})"
                )
            if comp.name not in self._due:
                wait = policy.delay_s
                self._due[comp.name] = now + wait
                later = f" in {wait:.0f} s, {policy.delay_reason}" if wait else ""
                note = f" ({policy.note})" if policy.note else ""
                self.echo(f"{comp.name} {self.how(comp)}; starting it again{later}{note}")
            if now < self._due[comp.name]:
                continue
            del self._due[comp.name]
            self._restarts[comp.name] = [*times, now]
            self.start(
                comp.name, policy.argv(), self._homes[comp.name], restart=policy, replace=comp
            )

    def pids(self) -> list[int]:
        """Every process started here that is still running (for checks)."""
        out = []
        for comp in self.components:
            out += [comp.proc.pid, *descendants(comp.proc.pid)]
        return [p for p in out if alive(p)]
