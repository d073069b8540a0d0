"""A study on Flower's deployment runtime: SuperLink + one SuperNode per site.

`medfed deploy local` starts the same topology as the docker-compose demo,
as plain processes on 127.0.0.1: `flower-superlink`, one `flower-supernode`
per hospital (each with `--node-config "partition-id=i num-partitions=N"`
and its own port), TLS and SuperNode authentication when asked, then submits
the study with `flwr run . <connection>` and waits for its results. The
ServerApp and ClientApp are the very same code as in simulation, so the
result files (config.json, rounds.jsonl, summary.json, report.md) are too.

Every process is started in its own process group and stopped on exit,
error, Ctrl-C or SIGTERM (finally + atexit + signal handler).

Certificates: `write_certificates()` makes a CA, a SuperLink server
certificate (SANs: the compose service name, localhost, 127.0.0.1) and one
EC P-384 authentication key pair per SuperNode (OpenSSH format, what
`flower-supernode --auth-supernode-private-key` and `flwr supernode register`
read). It uses the `cryptography` package rather than openssl so that it runs
the same way on every platform and in the image. Private keys are written
with mode 0600.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from client.study import Study

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_NAMES = ("superlink", "localhost", "127.0.0.1")
ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}


class DeployError(RuntimeError):
    """A component of the local federation failed: the message names it and the cause."""


# ----------------------------------------------------------------------------- certificates
@dataclass(frozen=True)
class Certificates:
    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def node_key(self, site: int) -> Path:
        return self.folder / f"site-{site}.key"

    def node_pub(self, site: int) -> Path:
        return self.folder / f"site-{site}.pub"

    def check(self, sites: int, *, auth: bool = True) -> None:
        need = [self.ca, self.server_cert, self.server_key]
        if auth:
            need += [p for i in range(sites) for p in (self.node_key(i), self.node_pub(i))]
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"certificate folder {self.folder}: missing {', '.join(missing)} "
                "(make them with `python deploy/certs.py --out DIR --sites N`)"
            )


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def write_certificates(
    folder: str | Path,
    *,
    sites: int = 3,
    names: Iterable[str] = SERVER_NAMES,
    days: int = 365,
    overwrite: bool = False,
) -> Certificates:
    """CA + SuperLink certificate (SANs `names`) + one auth key pair per site, under `folder`.

    Existing files are kept unless `overwrite` (node keys for new sites are added).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    certs = Certificates(Path(folder))
    certs.folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    pem = serialization.Encoding.PEM
    if overwrite or not all(p.is_file() for p in (certs.ca, certs.server_cert, certs.server_key)):
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medfed federation CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA384())
        )
        names = list(names)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        key = ec.generate_private_key(ec.SECP384R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA384())
        )
        certs.ca.write_bytes(ca_cert.public_bytes(pem))
        certs.server_cert.write_bytes(cert.public_bytes(pem))
        _write_private(
            certs.server_key,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
        # the CA key is not kept: nothing needs to sign again; rerun to rotate everything
    for i in range(sites):
        if overwrite or not certs.node_key(i).is_file() or not certs.node_pub(i).is_file():
            write_node_key(certs.node_key(i), certs.node_pub(i))
    return certs


def write_node_key(private_path: Path, public_path: Path) -> None:
    """One SuperNode authentication key pair: EC P-384 in OpenSSH format."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n"
    )


# ----------------------------------------------------------------------------- the app bundle
APP_PACKAGES = ("encryption", "client", "server", "simulations")


def default_app_dir() -> Path:
    """The medfed source folder (with pyproject.toml): this checkout, else the current folder."""
    for cand in (REPO_ROOT, Path.cwd()):
        if (cand / "pyproject.toml").is_file() and (cand / "client").is_dir():
            return cand
    raise FileNotFoundError(
        "no medfed source folder found (pyproject.toml + packages): pass --app DIR"
    )


def stage_app(src: str | Path, dest: str | Path) -> Path:
    """Copy the Flower app (pyproject.toml + packages) to `dest` for `flwr run`.

    Why not `flwr run .` on the checkout: flwr walks the whole folder (the
    virtual environment included: slow), and it rejects a `fab-exclude`
    pattern that matches no file, which happens for folders that .gitignore
    already hides (runs/, data/, deploy/certs/). The staged copy holds only
    the app's packages, and the patterns that match nothing are dropped.
    """
    import tomllib

    from flwr.cli.build import build_pathspec

    src, dest = Path(src), Path(dest)
    pyproject = src / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(
            f"{pyproject} not found: --app must be the medfed source folder (with pyproject.toml)"
        )
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for pkg in APP_PACKAGES:
        if (src / pkg).is_dir():
            shutil.copytree(
                src / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
    text = pyproject.read_text()
    conf = tomllib.loads(text).get("tool", {}).get("flwr", {}).get("app", {})
    files = [p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()]
    for key in ("fab-exclude", "fab-include"):
        patterns = conf.get(key)
        if not patterns:
            continue
        keep = [p for p in patterns if any(build_pathspec([p]).match_file(f) for f in files)]
        if keep != patterns:
            line = re.search(rf"^{key}\s*=.*$", text, flags=re.M)
            if line is None:  # multi-line list: leave it, flwr will say what is wrong
                continue
            new = f"{key} = {json.dumps(keep)}" if keep else ""
            text = text[: line.start()] + new + text[line.end() :]
    (dest / "pyproject.toml").write_text(text)
    return dest


# ----------------------------------------------------------------------------- processes
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _children() -> dict[int, list[int]]:
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
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _start_time(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot): tells a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# (pattern in the component's log, what it means)
CAUSES = (
    (r"address already in use", "its port is already in use by another program"),
    (
        r"CERTIFICATE_VERIFY_FAILED|certificate verify failed",
        "TLS: the SuperLink's certificate is not signed by the CA this SuperNode trusts "
        "(wrong --root-certificates / ca.crt)",
    ),
    (
        r"KEY_VALUES_MISMATCH|key values mismatch",
        "TLS: the server key does not belong to the server certificate",
    ),
    (r"SSL|TLS handshake", "TLS handshake failed (certificate or CA mismatch)"),
    (
        r"Failed to activate SuperNode|code: 2004",
        "the SuperLink refused this SuperNode's authentication key: it is not registered "
        "(`flwr supernode register KEY.pub`) or belongs to another federation",
    ),
    (r"Unable to parse the private key", "its authentication private key file cannot be read"),
    (
        r"Connection refused|Errno 111|Name or service not known|Temporary failure in name",
        "it cannot reach the SuperLink (nothing listens at that address)",
    ),
    (r"No such file or directory", "a file it needs is missing"),
)


def diagnose(text: str) -> str:
    """A one-line cause from a component's log, plus its last error lines."""
    text = re.sub(r"[\u2500-\u257f]", " ", _ANSI.sub("", text))  # rich's boxes
    cause = next((why for pat, why in CAUSES if re.search(pat, text, flags=re.I)), None)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"error|exception|failed|refused|code:", ln, re.I)]
    detail = " | ".join((errors or lines)[-3:])
    if cause:
        return f"{cause}; log: {detail}" if detail else cause
    return detail or "no output"


def probe_tls(address: str, ca: str | Path, timeout: float = 10.0) -> None:
    """Check that the SuperLink at `address` presents a certificate that `ca` signed.

    The flwr CLI reports a failed verification only as "connection unavailable";
    this names the cause. Raises DeployError; returns None when the chain is good.
    """
    import ssl

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise DeployError(f"CA certificate {ca}: cannot be read ({exc})") from None
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=host),
        ):
            return
    except ssl.SSLCertVerificationError as exc:
        raise DeployError(
            f"TLS: the SuperLink's certificate at {address} is not signed by the CA in {ca}, "
            f"or does not name {host!r} ({exc.verify_message}); use the ca.crt made together "
            "with server.pem"
        ) from None
    except ssl.SSLError as exc:
        raise DeployError(f"TLS handshake with the SuperLink at {address} failed: {exc}") from None
    except OSError as exc:
        raise DeployError(f"cannot reach the SuperLink at {address}: {exc}") from None


class LocalFederation:
    """SuperLink + N SuperNodes as plain processes on 127.0.0.1; a context manager.

    Every process is stopped on leaving the `with` block, whatever happened,
    and also by atexit and on SIGTERM/SIGHUP while it runs.
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
    ) -> None:
        if sites < 1:
            raise ValueError(f"--sites = {sites}: need at least 1 site")
        self.sites, self.tls, self.echo, self.start_timeout = sites, tls, echo, start_timeout
        self._tmp = tempfile.mkdtemp(prefix="medfed-deploy-")
        self.work = Path(work) if work else Path(self._tmp)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_dir = Path(log_dir) if log_dir else self.work / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
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
        self.components: list[Component] = []
        self.flwr_home = self.work / "flwr-home"
        self.connection = "medfed-local"
        self._old_handlers: dict[int, object] = {}
        self._stopped = False
        self._seen: dict[int, int | None] = {}  # every descendant seen: pid -> start time

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

    def _start(self, name: str, argv: list[str], home: Path) -> Component:
        home.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name.lower().replace(' ', '-')}.log"
        fh = open(log, "wb")  # noqa: SIM115 - the child writes to it; closed by the OS on exit
        proc = subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(home),
            cwd=str(home),
            start_new_session=True,
        )
        fh.close()
        comp = Component(name, proc, log)
        self.components.append(comp)
        self._seen.setdefault(proc.pid, _start_time(proc.pid))
        self._write_pids()
        return comp

    def _write_pids(self) -> None:
        """<log dir>/pids.json: every process started or seen (pid -> start time), for checks."""
        doc = {str(p): t for p, t in self._seen.items()}
        with contextlib.suppress(OSError):
            (self.log_dir / "pids.json").write_text(json.dumps(doc))

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> LocalFederation:
        atexit.register(self.stop)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _on_signal(self, signum, frame) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

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
            "--database",
            str(self.work / "superlink-state.db"),
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
        comp = self._start("SuperLink", argv, self.work / "superlink-home")
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
            out = _ANSI.sub("", res.stdout + res.stderr)
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
        argv = [
            self.tool("flower-supernode"),
            "--superlink",
            self.address,
            "--port",
            str(self.node_ports[i]),
            "--node-config",
            f"partition-id={i} num-partitions={self.sites}",
            "--max-retries",
            "5",
            "--max-wait-time",
            "60",
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
        return self._start(f"SuperNode site-{i}", argv, self.work / f"site-{i}-home")

    def supernodes(self) -> list[Component]:
        return [c for c in self.components if c.name.startswith("SuperNode")]

    def check_alive(self) -> None:
        """Raise DeployError naming the first component that stopped, and why."""
        before = len(self._seen)
        for comp in self.components:
            for pid in descendants(comp.proc.pid):
                self._seen.setdefault(pid, _start_time(pid))
        if len(self._seen) != before:
            self._write_pids()
        for comp in self.components:
            if comp.exited():
                code = comp.proc.returncode
                if code < 0:
                    how = f"was killed by signal {signal.Signals(-code).name} from outside medfed"
                else:
                    how = f"stopped (exit {code})"
                raise DeployError(
                    f"{comp.name} {how}: {diagnose(comp.log_text())} (full log: {comp.log})"
                )

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

    def stop(self) -> None:
        """Stop every process started here (and their children); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)
        # also children whose parent already died (same start time: not a reused pid)
        pids = [p for p, t in self._seen.items() if t is not None and _start_time(p) == t]
        for comp in reversed(self.components):
            pids += descendants(comp.proc.pid)
        pids = [p for p in dict.fromkeys(pids) if p != os.getpid()]
        for comp in reversed(self.components):
            if comp.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(comp.proc.pid, signal.SIGTERM)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for comp in self.components:
            try:
                comp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(comp.proc.pid, signal.SIGKILL)
                comp.proc.wait(timeout=5)
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self._tmp, ignore_errors=True)  # temporary FLWR_HOME, generated keys
        atexit.unregister(self.stop)

    def pids(self) -> list[int]:
        """Every process this federation started that is still running (for checks)."""
        out = []
        for comp in self.components:
            out += [comp.proc.pid, *descendants(comp.proc.pid)]
        return [p for p in out if _alive(p)]


# ----------------------------------------------------------------------------- the study
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
) -> Submission:
    """`flwr run <staged app> <connection> --run-config <study> --stream`; wait for summary.json.

    `watch` is called about every 0.2 s and may raise (a component died);
    `progress` gets {"event": "round", "line": ...} for every new line of rounds.jsonl.
    """
    out = Path(study.out_dir)
    if not out.is_absolute():
        raise ValueError(f"out-dir = {study.out_dir!r}: must be absolute for a deployment")
    app = stage_app(app_dir or default_app_dir(), work / "app")
    cfg = work / "run-config.toml"
    cfg.write_text(run_config_toml(study))
    for stale in ("summary.json", "rounds.jsonl"):
        if not study.resume:
            (out / stale).unlink(missing_ok=True)
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
        )
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            done = proc.poll() is not None
            rounds = out / "rounds.jsonl"
            if progress and rounds.is_file():
                lines = [x for x in rounds.read_text().splitlines() if x.strip()]
                for line in lines[seen:]:
                    try:
                        progress({"event": "round", "line": json.loads(line)})
                    except json.JSONDecodeError:
                        break
                    seen += 1
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
    output = _ANSI.sub("", log.read_text(errors="replace"))
    match = re.search(r"started run (\d+)", output)
    sub = Submission(int(match.group(1)) if match else None, proc.returncode, output)
    summary_path = out / "summary.json"
    if summary_path.is_file():
        sub.summary = json.loads(summary_path.read_text())
    if sub.summary.get("status") != "complete":
        tail = [ln for ln in output.splitlines() if ln.strip()][-12:]
        why = "the run was not accepted" if sub.run_id is None else f"run {sub.run_id} ended"
        status = sub.summary.get("status", "no summary.json")
        raise DeployError(
            f"ServerApp: {why} without a complete study ({status}) in {out}; "
            "flwr run said:\n  " + "\n  ".join(tail)
        )
    return sub


def run_local_deployment(
    study: Study,
    *,
    sites: int | None = None,
    tls: bool = False,
    port: int = 0,
    certs: str | Path | None = None,
    app_dir: str | Path | None = None,
    echo: Callable[[str], None] = print,
    progress: Callable[[dict], None] | None = None,
    timeout: float = 3600.0,
) -> dict:
    """Run `study` on a local SuperLink + SuperNodes; return summary.json's content.

    `sites` (default: the study's num-sites) SuperNodes are started and the
    study's num-sites is set to it. Logs of every component go to
    `<out-dir>/deploy-logs/`. Every process is stopped before this returns.
    """
    from client.site import data_home
    from simulations.runner import prepare_data

    if sites is not None and sites != study.num_sites:
        study = study.replace(num_sites=sites, min_sites=min(study.min_sites, sites))
    out = Path(study.out_dir).absolute()
    study = study.replace(out_dir=str(out))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(ENV)
    t0 = time.perf_counter()
    with LocalFederation(
        study.num_sites,
        tls=tls,
        port=port,
        certs=certs,
        log_dir=out / "deploy-logs",
        data_home=data_home(),
        echo=echo,
    ) as fed:
        fed.check_ports()  # before the (slow) data preparation
        if certs is not None and fed.certs is not None:
            fed.certs.check(fed.sites)
        echo("preparing the study's data (phantoms are generated once)")
        prepare_data(study)  # before the sites start: they would wait on each other's lock
        fed.start()
        echo(
            f"submitting study {study.name!r}: flwr run <app> {fed.connection} "
            f"({study.num_sites} sites x {study.num_rounds} rounds)"
        )
        sub = submit_study(
            study,
            flwr_home=fed.flwr_home,
            connection=fed.connection,
            app_dir=app_dir,
            work=fed.work,
            env=fed.env(fed.flwr_home),
            watch=fed.check_alive,
            progress=progress,
            timeout=timeout,
            flwr=fed.tool("flwr"),
            log=fed.log_dir / "flwr-run.log",
        )
    summary = dict(sub.summary)
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["run_id"] = sub.run_id
    return summary


def register_keys(
    keys: Iterable[str | Path],
    *,
    superlink: str,
    root_certificates: str | Path,
    wait: float = 120.0,
) -> list[str]:
    """`flwr supernode register` each public key; keys already registered are fine.

    Retries while the SuperLink is still starting (up to `wait` seconds).
    """
    ca = Path(root_certificates).absolute()
    if not ca.is_file():
        raise FileNotFoundError(f"--root-certificates {ca}: file not found")
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
    said = []
    with tempfile.TemporaryDirectory(prefix="medfed-register-") as tmp:
        home = Path(tmp)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "federation"\n\n[superlink.federation]\n'
            f'address = "{superlink}"\nroot-certificates = {json.dumps(str(ca))}\n'
        )
        env = dict(os.environ, FLWR_HOME=str(home), **ENV)
        for key in keys:
            key = Path(key).absolute()
            if not key.is_file():
                raise FileNotFoundError(f"SuperNode public key {key}: file not found")
            deadline = time.monotonic() + wait
            while True:
                try:
                    probe_tls(superlink, ca)
                except DeployError as exc:
                    if "cannot reach" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(2)
                    continue
                res = subprocess.run(
                    [flwr, "supernode", "register", str(key), "federation"],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=120,
                )
                out = " ".join(_ANSI.sub("", res.stdout + res.stderr).split())
                if res.returncode == 0:
                    said.append(f"{key.name}: registered ({out[-80:]})")
                    break
                if "already in use" in out:
                    said.append(f"{key.name}: already registered")
                    break
                if time.monotonic() > deadline:
                    raise DeployError(
                        f"registering {key.name} with the SuperLink at {superlink} "
                        f"failed: {diagnose(out)}"
                    )
                time.sleep(2)
    return said
