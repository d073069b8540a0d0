"""`LocalFederation`: a SuperLink and one SuperNode per site as processes on 127.0.0.1.

Isolation `process` (the default): each SuperNode runs with `--isolation
process` beside one long-lived medfed executor (deploy/executor.py)
that runs its ClientApp messages in one process, keeping imports and the
site's shard; `subprocess` is Flower's own: a new `flwr-clientapp` process per
message.

A hospital's process that stops while a study runs (a SuperNode or an executor
killed from outside, or one that crashed) is that hospital's failure, not the
study's: `keep_alive` starts it again, as a hospital's operator would, and the
server records the site failed in the round it missed (Flower's "Node
Unavailable", or the round-timeout) and takes it back once it has reconnected
(`rejoin-wait`); the study stops only when fewer than `min-sites` reply. A site
whose process stops `RESTART_LIMIT` times within `RESTART_WINDOW_S` is not
started again and the deployment stops with the reason; the SuperLink stopping
always stops it.

`LocalFederation` is the Flower topology (ports, certificates, the SuperLink's,
SuperNodes' and executors' command lines, the `flwr` CLI); the processes
themselves (start, logs, pids.json, signals, restarts, stop) are its
`Supervisor`'s (deploy/supervisor.py), which knows nothing of Flower."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from deploy.certificates import Certificates, probe_tls, write_certificates
from deploy.diagnosis import ANSI, diagnose
from deploy.errors import ENV, REPO_ROOT, DeployError
from deploy.processes import Component, free_port, port_in_use
from deploy.supervisor import Restart, Supervisor

# process: one medfed executor per SuperNode runs every message; subprocess: Flower's
# SuperExec starts a flwr-clientapp process per message
ISOLATIONS = ("process", "subprocess")
RESTART_LIMIT = 3  # a site's SuperNode or executor started again at most this often ...
RESTART_WINDOW_S = 300.0  # ... within this many seconds; then the deployment stops
# with SuperNode authentication a node's key activates only one node at a time: the
# SuperLink must first count the stopped node as gone (no heartbeat for flwr's
# HEARTBEAT_PATIENCE x HEARTBEAT_DEFAULT_INTERVAL = 60 s), else "Failed to activate"
NODE_GONE_S = 62.0


class LocalFederation:
    """SuperLink + N SuperNodes as plain processes on 127.0.0.1; a context manager.

    Every process is stopped on leaving the `with` block, whatever happened,
    and also by atexit and on SIGTERM/SIGHUP while it runs (its `supervisor`).
    """

    def __init__(
        self,
        sites: int,
        *,
        tls: bool = False,
        port: int = 0,
        certs: str | Path | None = None,
        work: str | Path | None = None,
        log_dir: str | Path | None = None,
        data_home: str | Path | None = None,
        echo: Callable[[str], None] = print,
        start_timeout: float = 120.0,
        isolation: str = "process",
        restart: bool = True,
    ) -> None:
        if sites < 1:
            raise ValueError(f"--sites = {sites}: need at least 1 site")
        if isolation not in ISOLATIONS:
            raise ValueError(f"--isolation {isolation!r}: expected one of {', '.join(ISOLATIONS)}")
        self.isolation = isolation
        self.sites, self.tls, self.echo, self.start_timeout = sites, tls, echo, start_timeout
        self._tmp = tempfile.mkdtemp(prefix="medfed-deploy-")
        self.work = Path(work) if work else Path(self._tmp)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_dir = Path(log_dir) if log_dir else self.work / "logs"
        self.data_home = Path(data_home).absolute() if data_home else None
        if port:
            if not 0 < port <= 65535 - sites:
                raise ValueError(
                    f"--port {port}: must be 1..{65535 - sites} (SuperNodes use "
                    f"the next {sites} ports)"
                )
            self.port = port
            self.node_ports = [port + 1 + i for i in range(sites)]
        else:
            ports: list[int] = []
            while len(ports) < sites + 1:  # distinct, free now
                if (p := free_port()) not in ports:
                    ports.append(p)
            self.port, self.node_ports = ports[0], ports[1:]
        self.address = f"127.0.0.1:{self.port}"
        self.certs: Certificates | None = None
        if tls:
            self.certs = Certificates(Path(certs)) if certs else Certificates(self.work / "certs")
        self.flwr_home = self.work / "flwr-home"
        self.connection = "medfed-local"
        self.supervisor = Supervisor(
            self.log_dir,
            env=self.env,
            echo=lambda text: self.echo(text),  # the echo of now (tests replace it)
            describe=diagnose,
            restart=restart,  # start a site's stopped SuperNode or executor again
            restart_limit=RESTART_LIMIT,
            restart_window_s=RESTART_WINDOW_S,
            # the temporary FLWR_HOME and generated keys go with the processes
            cleanup=lambda: shutil.rmtree(self._tmp, ignore_errors=True),
        )

    # -- the processes: the supervisor's ------------------------------------------------
    @property
    def components(self) -> list[Component]:
        return self.supervisor.components

    def track(self, pid: int) -> None:
        """Record a process this federation started (pids.json), e.g. `flwr run`."""
        self.supervisor.track(pid)

    def __enter__(self) -> LocalFederation:
        self.supervisor.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise DeployError naming the first component that stopped, and why."""
        self.supervisor.check_alive()

    def keep_alive(self) -> None:
        """The watch while a study runs: a site's SuperNode or executor that stopped is
        started again (see the module's docstring); DeployError when the SuperLink
        stopped, when restarts are off, or when a site's process keeps stopping."""
        self.supervisor.keep_alive()

    def stop(self) -> None:
        """Stop every process started here (and their children); idempotent."""
        self.supervisor.stop()

    def pids(self) -> list[int]:
        """Every process this federation started that is still running (for checks)."""
        return self.supervisor.pids()

    # -- environment --------------------------------------------------------------
    def env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(ENV)
        env["FLWR_HOME"] = str(home)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        if self.data_home:
            env["MEDFED_DATA_HOME"] = str(self.data_home)
        # the app processes import the project from the bundle; keep the checkout importable too
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env

    def tool(self, name: str) -> str:
        exe = Path(sys.executable).parent / name
        if exe.exists():
            return str(exe)
        found = shutil.which(name)
        if not found:
            raise DeployError(
                f"{name}: not found next to {sys.executable} nor on PATH (install flwr)"
            )
        return found

    def _site_restart(self, i: int, argv: Callable[[], list[str]], supernode: bool) -> Restart:
        """How site i's SuperNode or executor is started again when it stops."""
        # with SuperNode authentication its key activates one node at a time: wait until
        # the SuperLink counts the stopped node as gone
        wait = NODE_GONE_S if supernode and self.certs else 0.0
        return Restart(
            argv=argv,
            delay_s=wait,
            delay_reason="once the SuperLink counts its node as gone",
            note=f"the study goes on while min-sites hold: a round site-{i} misses records "
            "it failed",
        )

    # -- the topology ---------------------------------------------------------------
    def check_ports(self) -> None:
        """DeployError naming the component whose port another program holds."""
        for name, port in [("SuperLink", self.port)] + [
            (f"SuperNode site-{i}", p) for i, p in enumerate(self.node_ports)
        ]:
            if port_in_use(port):
                raise DeployError(
                    f"{name}: port 127.0.0.1:{port} is already in use by another program; "
                    "stop it or choose other ports with --port"
                )

    def start(self) -> None:
        """Check ports, make certificates, start the SuperLink, register and start SuperNodes."""
        self.check_ports()
        if self.certs is not None:
            if self.certs.folder == self.work / "certs":
                write_certificates(self.certs.folder, sites=self.sites)
            self.certs.check(self.sites)
        self.write_connection()
        self.start_superlink()
        if self.certs is not None:
            try:
                probe_tls(self.address, self.certs.ca)
            except DeployError as exc:
                raise DeployError(f"SuperNodes and flwr CLI -> SuperLink: {exc}") from None
            self.register_nodes()
        for i in range(self.sites):
            self.start_supernode(i)
        self.wait_nodes_online()

    def write_connection(self) -> Path:
        """$FLWR_HOME/config.toml for the `flwr` CLI: one connection to this SuperLink."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = [
            "[superlink]",
            f'default = "{self.connection}"',
            "",
            f"[superlink.{self.connection}]",
            f'address = "{self.address}"',
        ]
        if self.certs is not None:
            lines.append(f"root-certificates = {json.dumps(str(self.certs.ca.absolute()))}")
        else:
            lines.append("insecure = true")
        path = self.flwr_home / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_superlink(self) -> Component:
        argv = [
            self.tool("flower-superlink"),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            # state in memory (flwr's default), not --database: a SQLite file made every
            # message object a transaction, and a deployed phase took twice as long
            # (measured; docs/DEPLOY.md); the federation lives only as long as this run
            "--disable-runtime-dependency-installation",
        ]
        if self.certs is not None:
            c = self.certs
            argv += [
                "--ssl-certfile",
                str(c.server_cert.absolute()),
                "--ssl-keyfile",
                str(c.server_key.absolute()),
                "--ssl-ca-certfile",
                str(c.ca.absolute()),
                "--enable-supernode-auth",
            ]
        else:
            argv.append("--insecure")
        comp = self.supervisor.start("SuperLink", argv, self.work / "superlink-home")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if comp.exited():
                raise DeployError(
                    f"SuperLink did not start: {diagnose(comp.log_text())} (full log: {comp.log})"
                )
            if "Uvicorn running on" in comp.log_text():
                self.echo(
                    f"SuperLink listening on {self.address}"
                    f"{' (TLS, SuperNode authentication)' if self.certs else ' (insecure)'}"
                )
                return comp
            time.sleep(0.2)
        raise DeployError(
            f"SuperLink: not listening on {self.address} after "
            f"{self.start_timeout:.0f} s (log: {comp.log})"
        )

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.tool("flwr"), *args],
            capture_output=True,
            text=True,
            env=self.env(self.flwr_home),
            timeout=timeout,
            cwd=str(self.flwr_home),
            start_new_session=True,
        )

    def register_nodes(self) -> None:
        assert self.certs is not None
        for i in range(self.sites):
            res = self.flwr(
                "supernode", "register", str(self.certs.node_pub(i).absolute()), self.connection
            )
            out = ANSI.sub("", res.stdout + res.stderr)
            if res.returncode != 0 and "already in use" not in out:
                self.check_alive()  # a SuperLink that died says more than the CLI
                raise DeployError(
                    f"flwr supernode register: registering SuperNode site-{i}'s key with the "
                    f"SuperLink at {self.address} failed: {diagnose(out)}"
                )

    def start_supernode(
        self, i: int, *, root_certificates: Path | None = None, private_key: Path | None = None
    ) -> Component:
        """SuperNode of site i; `root_certificates` / `private_key` replace the federation's."""
        node = self.supervisor.start(
            f"SuperNode site-{i}",
            self._supernode_argv(i, root_certificates, private_key),
            self.work / f"site-{i}-home",
            # started again with the federation's certificates and key
            restart=self._site_restart(i, lambda: self._supernode_argv(i), supernode=True),
        )
        if self.isolation == "process":
            self.start_executor(i)
        return node

    def _supernode_argv(
        self, i: int, root_certificates: Path | None = None, private_key: Path | None = None
    ) -> list[str]:
        from client.faults import ALLOW_FAULT_INJECTION

        argv = [
            self.tool("flower-supernode"),
            "--superlink",
            self.address,
            "--port",
            str(self.node_ports[i]),
            "--node-config",
            # every hospital runs on the operator's own machine: they opt in to the
            # study's fault-sites (client/faults.py); a compose hospital does not
            f"partition-id={i} num-partitions={self.sites} {ALLOW_FAULT_INJECTION}=true",
            "--max-retries",
            "5",
            "--max-wait-time",
            "60",
            "--isolation",
            self.isolation,
        ]
        if self.certs is not None:
            argv += [
                "--root-certificates",
                str(Path(root_certificates or self.certs.ca).absolute()),
                "--auth-supernode-private-key",
                str(Path(private_key or self.certs.node_key(i)).absolute()),
            ]
        else:
            argv.append("--insecure")
        from deploy.supernode import supernode_command

        return supernode_command(argv)

    def start_executor(self, i: int) -> Component:
        """The long-lived executor beside SuperNode i: it runs every ClientApp message of
        that SuperNode in one process (its own FLWR_HOME is the SuperNode's)."""
        return self.supervisor.start(
            f"executor site-{i}",
            self._executor_argv(i),
            self.work / f"site-{i}-home",
            restart=self._site_restart(i, lambda: self._executor_argv(i), supernode=False),
        )

    def _executor_argv(self, i: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "simulations.cli",
            "deploy",
            "executor",
            "--supernode",
            f"127.0.0.1:{self.node_ports[i]}",
            "--task-log",
            str(self.task_log(i).absolute()),
        ]

    def task_log(self, i: int) -> Path:
        """One JSON line per message executor i ran (pid, type, status, seconds)."""
        return self.log_dir / f"executor-site-{i}.tasks.jsonl"

    def supernodes(self) -> list[Component]:
        return [c for c in self.components if c.name.startswith("SuperNode")]

    def executors(self) -> list[Component]:
        return [c for c in self.components if c.name.startswith("executor")]

    def wait_nodes_online(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = set(range(self.sites))
        while pending and time.monotonic() < deadline:
            self.check_alive()
            for i in sorted(pending):
                if "SuperNode ID:" in self.supernodes()[i].log_text():
                    pending.discard(i)
            time.sleep(0.2)
        if pending:
            names = ", ".join(f"site-{i}" for i in sorted(pending))
            raise DeployError(
                f"SuperNode {names}: not connected to the SuperLink after "
                f"{self.start_timeout:.0f} s (logs in {self.log_dir})"
            )
        self.echo(
            f"{self.sites} SuperNodes connected (ports {', '.join(map(str, self.node_ports))})"
        )
