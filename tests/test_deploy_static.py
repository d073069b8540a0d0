"""The docker-compose demo and the image, checked without Docker.

The compose file must parse (and validate with docker-compose 1.29 and
Compose v2 where they are installed), use only flags that the installed flwr
CLIs accept, give every hospital a consistent partition, its own volumes and
only its own keys, and pin the same flwr as pyproject.toml. Certificates from
the repository's script must form a chain the SuperLink and SuperNodes accept
(the process tests in test_deploy_local.py start real ones with them).
tests/test_docker.py runs the federation itself (`make test-docker`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy import (
    Certificates,
    flwr_run_argv,
    run_config_toml,
    stage_app,
    write_certificates,
)
from simulations.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"


def _pyproject_flwr_version() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("flwr"))
    return pin.split("==")[1]


def _flags(cli: list[str]) -> set[str]:
    """Long options from a CLI's --help (argparse or typer output)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    res = subprocess.run(cli + ["--help"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", res.stdout))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def help_flags() -> dict[str, set[str]]:
    return {
        "flower-superlink": _flags([str(BIN / "flower-superlink")]),
        "flower-supernode": _flags([str(BIN / "flower-supernode")]),
        "flwr run": _flags([str(BIN / "flwr"), "run"]),
    }


def _opt(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


EXECUTOR = ["medfed", "deploy", "executor"]


def _hospitals(services: dict) -> dict[str, dict]:
    """Services that run a SuperNode: `medfed deploy executor ... -- flower-supernode ...`."""
    return {n: s for n, s in services.items() if "flower-supernode" in s["command"]}


def _node(svc: dict) -> list[str]:
    """The flower-supernode command line of a hospital (after the executor's `--`)."""
    cmd = svc["command"]
    return cmd[cmd.index("flower-supernode") :]


def _defaults(text: str) -> str:
    """`text` with every ${VAR:-default} replaced by its default (what Compose runs unset)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def _binds(svc: dict) -> dict[str, tuple[str, bool]]:
    """Container path -> (host path, read-only) of a service's bind mounts."""
    out = {}
    for vol in svc.get("volumes", []):
        parts = vol.split(":")
        if parts[0].startswith("./"):
            out[parts[1]] = (parts[0], parts[2:] == ["ro"])
    return out


def test_compose_parses_and_has_the_topology(services):
    assert set(services) >= {"certs", "superlink", "register", "submit"}
    assert len(_hospitals(services)) == 3
    for name, svc in services.items():
        assert isinstance(svc["command"], list), f"{name}: command must be a list"
        assert svc["image"] == "medfed:latest"
        assert svc["environment"]["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    # one service builds the image: Compose v2 builds once per service with a build section
    builders = [n for n, s in services.items() if "build" in s]
    assert builders == ["certs"], builders
    build = services["certs"]["build"]
    assert build["dockerfile"] == "deploy/Dockerfile" and (ROOT / build["dockerfile"]).is_file()


def test_base_image_is_a_build_argument():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    assert "FROM ${BASE_IMAGE}" in dockerfile
    compose = yaml.safe_load(_defaults(COMPOSE.read_text()))
    assert compose["services"]["certs"]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"
    assert "BASE_IMAGE: ${MEDFED_BASE_IMAGE:-python:3.11-slim}" in COMPOSE.read_text()


def test_flower_commands_use_only_accepted_flags(services, help_flags):
    checked = 0
    for name, svc in services.items():
        cmd = _node(svc) if name in _hospitals(services) else svc["command"]
        if cmd[0] in ("flower-superlink", "flower-supernode"):
            used = {t for t in cmd if t.startswith("--")}
            unknown = used - help_flags[cmd[0]]
            assert not unknown, f"{name}: {cmd[0]} does not accept {sorted(unknown)}"
            assert "--insecure" not in used, f"{name}: the demo runs with TLS"
            if "--isolation" in cmd:
                assert _opt(cmd, "--isolation") in ("subprocess", "process")
            checked += 1
    assert checked == 4  # the SuperLink and three SuperNodes


def test_medfed_commands_parse(services):
    parser = build_parser()
    n = 0
    for name, svc in services.items():
        cmd = [_defaults(t) for t in svc["command"]]
        if cmd[0] == "medfed":
            args = parser.parse_args(cmd[1:])
            assert callable(args.func), name
            n += 1
    assert n == 6  # certs, register, submit and each hospital's executor


def test_each_hospital_runs_its_supernode_under_the_executor(services):
    """The executor asks its own SuperNode's Runtime API (the container's 127.0.0.1,
    the SuperNode's --port) for tasks; the SuperNode leaves them to it (--isolation
    process) and serves that API on 127.0.0.1 only (flwr's default --host)."""
    from simulations.cli import build_parser

    parser = build_parser()
    for name, svc in _hospitals(services).items():
        cmd, node = svc["command"], _node(svc)
        assert cmd[:3] == EXECUTOR and cmd[cmd.index("flower-supernode") - 1] == "--", name
        args = parser.parse_args(cmd[1:])
        assert args.func.__name__ == "main_executor", name
        assert args.supernode == f"127.0.0.1:{_opt(node, '--port')}", name
        assert _opt(node, "--isolation") == "process", name
        assert _opt(node, "--host") in (None, "127.0.0.1"), name


@pytest.mark.parametrize("study", ["demo.toml", "consortium.toml"])
def test_submit_study_is_chosen_by_STUDY_and_writes_under_runs(services, study):
    from study.config import Study

    cmd = services["submit"]["command"]
    assert "${STUDY:-simulations/studies/demo.toml}" in cmd
    assert "--out" not in cmd  # the study's own out-dir, relative to /app
    path = ROOT / "simulations" / "studies" / study
    out = Study.from_toml(path).out_dir
    # /app/runs is ./runs in the superlink and submit containers: results land on the host
    assert out.startswith("runs/") and ".." not in out, f"{study}: out-dir {out!r}"


def test_consortium_study_is_a_learned_consortium():
    from study.config import Study

    s = Study.from_toml(ROOT / "simulations" / "studies" / "consortium.toml")
    assert (s.method, s.exchange, s.num_sites) == ("learned-codec-aes", "consortium", 3)
    assert s.min_sites == 2 and s.num_rounds >= 3  # a site may fail a round and rejoin
    assert 0 < s.round_timeout <= 300


def test_flwr_run_flags_used_by_submit(help_flags):
    argv = flwr_run_argv("flwr", Path("app"), "conn", Path("cfg.toml"))
    assert argv[:4] == ["flwr", "run", "app", "conn"]
    used = {t for t in argv if t.startswith("--")}
    assert used == {"--run-config", "--stream"}
    assert used <= help_flags["flwr run"]


def test_superlink_tls_auth_and_state(services):
    cmd = services["superlink"]["command"]
    for flag in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile"):
        assert _opt(cmd, flag).startswith("/certs/")
    assert "--enable-supernode-auth" in cmd
    assert "--disable-runtime-dependency-installation" in cmd
    assert _opt(cmd, "--host") == "0.0.0.0"
    db = _opt(cmd, "--database")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["superlink"]["volumes"]}
    assert db.startswith("/state/") and mounts["/state"] == "superlink-state"  # persisted
    assert mounts["/app/runs"] == "./runs"  # the ServerApp writes results there


def test_node_config_matches_the_number_of_hospitals(services):
    hospitals = _hospitals(services)
    n = len(hospitals)
    seen = []
    for name, svc in hospitals.items():
        cmd = _node(svc)
        from flwr.common.config import parse_config_args

        cfg = parse_config_args([_opt(cmd, "--node-config")])  # as flower-supernode reads it
        assert set(cfg) == {"partition-id", "num-partitions", "identity-dir"}, name
        assert int(cfg["num-partitions"]) == n, name
        pid = int(cfg["partition-id"])
        seen.append(pid)
        assert name == f"hospital-{pid}"
        # its own key, the one registered for this partition; the CA from its own folder
        assert _opt(cmd, "--auth-supernode-private-key") == f"/certs/site-{pid}.key"
        assert _opt(cmd, "--root-certificates") == f"/certs/site-{pid}/ca.crt"
        assert cfg["identity-dir"] == f"/certs/site-{pid}"  # its grant identity folder
    assert sorted(seen) == list(range(n))
    register = services["register"]["command"]
    assert [t for t in register if t.endswith(".pub")] == [f"/certs/site-{i}.pub" for i in range(n)]
    assert _opt(services["certs"]["command"], "--sites") == str(n)
    assert f"num-sites={n}" in services["submit"]["command"]


def test_addresses_and_ports_line_up(services):
    sl = services["superlink"]["command"]
    port = _opt(sl, "--port")
    target = f"superlink:{port}"
    for name, svc in _hospitals(services).items():
        assert _opt(_node(svc), "--superlink") == target, name
    for name in ("register", "submit"):
        assert _opt(services[name]["command"], "--superlink") == target, name
    published = services["superlink"]["ports"][0]
    assert published.rsplit(":", 1)[1] == port
    health = " ".join(services["superlink"]["healthcheck"]["test"])
    assert "8000" in health and port == "8000"


def test_volumes_line_up(compose, services):
    declared = set(compose["volumes"])
    used = set()
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith("./"):
                assert src in declared, f"{name}: volume {src} is not declared"
                used.add(src)
    assert used == declared, f"declared but unused: {declared - used}"
    for name, svc in _hospitals(services).items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert mounts["/data"] == f"{name}-data"  # its own phantoms
        assert mounts["/app/runs"] == f"{name}-state"  # its own key bundle and cache
    env = next(iter(services.values()))["environment"]
    assert env["MEDFED_DATA_HOME"] == "/data"


def test_each_container_gets_only_the_keys_it_needs(services):
    certs = "./deploy/certs"
    expected = {
        "certs": {"/certs": (certs, False)},  # writes them
        "superlink": {
            "/certs/ca.crt": (f"{certs}/ca.crt", True),
            "/certs/server.pem": (f"{certs}/server.pem", True),
            "/certs/server.key": (f"{certs}/server.key", True),
            # the reading centre's public certificate, to relay to the sites that grant it
            "/certs/auditor/identity.crt": (f"{certs}/auditor/identity.crt", True),
            "/app/runs": ("./runs", False),
        },
        "register": {"/certs/ca.crt": (f"{certs}/ca.crt", True)}
        | {f"/certs/site-{i}.pub": (f"{certs}/site-{i}.pub", True) for i in range(3)},
        "submit": {"/certs/ca.crt": (f"{certs}/ca.crt", True), "/app/runs": ("./runs", False)},
    }
    for i in range(3):  # a hospital: its identity folder (with ca.crt) and its auth key
        expected[f"hospital-{i}"] = {
            f"/certs/site-{i}": (f"{certs}/site-{i}", True),
            f"/certs/site-{i}.key": (f"{certs}/site-{i}.key", True),
        }
    assert {n: _binds(s) for n, s in services.items()} == expected
    # paths used in commands are mounted
    for name, svc in services.items():
        for token in svc["command"]:
            if token.startswith("/certs/") and name != "certs":
                assert any(token.startswith(dst) for dst in _binds(svc)), (name, token)


def test_startup_order(services):
    dep = {n: s.get("depends_on", {}) for n, s in services.items()}
    assert dep["superlink"]["certs"]["condition"] == "service_completed_successfully"
    assert "depends_on" not in services["certs"]
    assert dep["register"]["superlink"]["condition"] == "service_healthy"
    for name in _hospitals(services):
        assert dep[name]["register"]["condition"] == "service_completed_successfully"
        assert name in dep["submit"]


def test_flwr_version_pinned_everywhere(services):
    version = _pyproject_flwr_version()
    import flwr

    assert flwr.__version__ == version
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={version}" in dockerfile
    assert '"flwr[simulation]==${FLWR_VERSION}"' in dockerfile
    assert services["certs"]["build"]["args"]["FLWR_VERSION"] == version


def test_image_copies_the_app_and_ignores_secrets():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for pkg in ("encryption", "client", "server", "simulations", "deploy", "benchmarks"):
        assert f"COPY {pkg}/ {pkg}/" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in ("deploy/certs", "data", "runs", ".venv"):
        assert path in ignored
    assert "deploy/certs/" in (ROOT / ".gitignore").read_text().split()


def _compose_v2() -> bool:
    if shutil.which("docker") is None:
        return False
    res = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
    return res.returncode == 0


COMPOSE_CLIS = [
    pytest.param(
        ["docker-compose"],
        marks=pytest.mark.skipif(
            shutil.which("docker-compose") is None, reason="docker-compose (v1.29) not installed"
        ),
        id="v1",
    ),
    pytest.param(
        ["docker", "compose"],
        marks=pytest.mark.skipif(not _compose_v2(), reason="Compose v2 plugin not installed"),
        id="v2",
    ),
]


@pytest.mark.parametrize("cli", COMPOSE_CLIS)
@pytest.mark.parametrize("study", [None, "simulations/studies/consortium.toml"])
def test_docker_compose_config_validates(cli, study):
    """The file is in the subset both Compose versions read; STUDY reaches the submit command."""
    # PYTHONPATH: Flower's simulation engine puts this environment's site-packages
    # there when an earlier test ran a study; Compose v1 is a program of the
    # system's Python and must not import this environment's packages
    dropped = ("STUDY", "MEDFED_BASE_IMAGE", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    if study:
        env["STUDY"] = study
    res = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    resolved = yaml.safe_load(res.stdout)["services"]
    assert (study or "simulations/studies/demo.toml") in resolved["submit"]["command"]
    assert resolved["certs"]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"


@pytest.mark.parametrize("script", ["engine.sh", "base-image.sh"])
def test_deploy_scripts_parse_and_explain_themselves(script):
    path = ROOT / "deploy" / script
    assert subprocess.run(["bash", "-n", str(path)], timeout=30).returncode == 0
    res = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "Debian" in res.stdout, res.stderr
    bad = subprocess.run(["bash", str(path), "--nope"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--nope" in bad.stderr


def test_base_image_script_trusts_the_hosts_ca_and_pip_settings():
    text = (ROOT / "deploy" / "base-image.sh").read_text()
    for needle in ("ca-certificates.crt", "SSL_CERT_FILE", "global.index-url", "find-links"):
        assert needle in text, needle


# --------------------------------------------------------------------------- certificates
def test_certificate_chain(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.cli.supernode.register import try_load_public_key

    certs = write_certificates(tmp_path / "certs", sites=2)
    certs.check(2)
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"superlink", "localhost"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0  # it signs leaves only
    assert ca.subject.rfc4514_string() == "CN=medfed federation CA"
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp384r1"
    assert (
        x509.ExtendedKeyUsageOID.SERVER_AUTH
        in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    for key in (certs.server_key, certs.ca_key, certs.node_key(0), certs.node_key(1)):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    # the CA key certifies the server certificate's issuer (kept for sites added later)
    from encryption.private_files import load_private_key_file

    ca_key = load_private_key_file(certs.ca_key, ec.EllipticCurvePrivateKey, "CA key")
    assert ca_key.public_key().public_numbers() == ca.public_key().public_numbers()
    # node keys: what flower-supernode and `flwr supernode register` read
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    priv = load_ssh_private_key(certs.node_key(0).read_bytes(), None)
    assert isinstance(priv, ec.EllipticCurvePrivateKey) and priv.curve.name == "secp384r1"
    assert try_load_public_key(certs.node_pub(0))
    assert certs.node_pub(0).read_bytes() != certs.node_pub(1).read_bytes()


def test_certificates_are_kept_unless_overwrite(tmp_path):
    certs = write_certificates(tmp_path, sites=1)
    before = certs.ca.read_bytes(), certs.node_key(0).read_bytes()
    write_certificates(tmp_path, sites=2)
    assert (certs.ca.read_bytes(), certs.node_key(0).read_bytes()) == before
    assert certs.node_key(1).is_file()
    write_certificates(tmp_path, sites=2, overwrite=True)
    assert certs.ca.read_bytes() != before[0]


def test_cert_script_runs_standalone(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "certs.py"),
            "--out",
            str(tmp_path),
            "--sites",
            "3",
            "--name",
            "fl.example.org",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    Certificates(tmp_path).check(3)
    from cryptography import x509

    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fl.example.org" in sans.get_values_for_type(x509.DNSName)


def test_missing_certificates_are_named(tmp_path):
    write_certificates(tmp_path, sites=1)
    with pytest.raises(FileNotFoundError, match="site-1.key"):
        Certificates(tmp_path).check(2)


# --------------------------------------------------------------------------- app bundle
def test_staged_app_builds_a_fab(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    app = stage_app(ROOT, tmp_path / "app")
    fab = build_fab_from_disk(app)
    assert 0 < len(fab) < 10_000_000
    assert (app / "client" / "client_app.py").is_file()
    assert not (app / "tests").exists() and not (app / ".venv").exists()
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert "server/server_app.py" in names and "pyproject.toml" in names


def test_run_config_file_round_trips_the_study():
    from study.config import Study

    study = Study(name="x y", num_sites=2, out_dir="/abs/out", resume=False, num_gpus=0.5)
    doc = tomllib.loads(run_config_toml(study))
    assert Study.from_mapping(doc) == study
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(doc) <= set(declared)  # flwr run rejects undeclared keys


def test_the_serverapps_checkpoint_key_store_is_a_volume_outside_the_run_folder(compose, services):
    """The ServerApp runs in the superlink container and signs the study's checkpoints:
    its key store (MEDFED_KEY_HOME, server/keystore.py) is a named volume of its own,
    not the results folder it protects, and no other container sees it."""
    env = services["superlink"]["environment"]
    home = env["MEDFED_KEY_HOME"]
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"  # the shared env is kept
    assert env["MEDFED_DATA_HOME"] == "/data"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["superlink"]["volumes"]}
    assert mounts.get(home) == "superlink-keys" and "superlink-keys" in compose["volumes"]
    for dst, src in mounts.items():  # not inside a mounted run folder, nor holding one
        if src.startswith("./runs") or dst.startswith("/app"):
            assert not home.startswith(dst.rstrip("/") + "/") and not dst.startswith(home)
    for name, svc in services.items():
        if name != "superlink":
            assert "MEDFED_KEY_HOME" not in svc["environment"], name
            assert not any(v.startswith("superlink-keys:") for v in svc.get("volumes", [])), name


def test_local_supernodes_opt_in_to_fault_injection():
    """`medfed deploy local` runs every hospital on the operator's own machine: its
    SuperNodes opt in to the study's fault-sites (node config allow-fault-injection,
    client/faults.py). A compose hospital does not (its node config has exactly
    partition-id, num-partitions and identity-dir: test_node_config_matches_...)."""
    from flwr.common.config import parse_config_args

    from deploy import LocalFederation

    fed = LocalFederation(2)
    try:
        argv = fed._supernode_argv(1)
    finally:
        fed.stop()
    config = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert config == {"partition-id": 1, "num-partitions": 2, "allow-fault-injection": True}
