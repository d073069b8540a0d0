"""The docker-compose federation, driven as a user drives it: build, certs, up,
a consortium study, a hospital stopped and restarted mid-study, down -v.

Needs a Docker engine and Compose (`docker compose`, else docker-compose
1.29): `make test-docker` starts one with deploy/engine.sh and builds the
base image without a registry with deploy/base-image.sh. Marker `docker`,
outside `make test`. Without an engine these tests skip, unless
MEDFED_REQUIRE_DOCKER=1 (set by `make test-docker`), which makes that a failure.

The tests share one federation and run in file order: the project is copied
into a temporary folder (its own ./runs and ./deploy/certs) and started
under its own Compose project name and SuperLink port, so nothing of a
checkout's own demo is touched. The image it builds is `medfed:latest`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from deploy import free_port
from study.schema import read_run

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 2400
STUDY_TIMEOUT_S = 720  # an idle machine runs the demo in about 3 min
HOSPITALS = ("hospital-0", "hospital-1", "hospital-2")
CONSORTIUM = "simulations/studies/consortium.toml"
# The fault run: the consortium study's data settings (its phantoms are on the hospitals'
# volumes by then), 4 rounds, a round-timeout that round 2 waits for the stopped site, and
# a rejoin-wait in which round 3 waits for the restarted hospital to reconnect.
FAULT_SETTINGS = [
    a
    for kv in ("num-sites=3", "num-rounds=4", "min-sites=2", "round-timeout=150", "method=aes-gcm",
               "image-size=32", "phantom-patients=60", "phantom-size=64", "holdout-images=64",
               "rejoin-wait=90")
    for a in ("--set", kv)
]  # fmt: skip
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _engine_up() -> bool:
    return shutil.which("docker") is not None and _run(["docker", "info"]).returncode == 0


def compose_command() -> list[str] | None:
    """`docker compose` (v2) when the plugin is there, else docker-compose (v1.29)."""
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _no_docker_reason() -> str | None:
    if not _engine_up():
        return "no Docker engine answers `docker info` (make test-docker starts one)"
    if compose_command() is None:
        return "neither `docker compose` nor docker-compose is installed"
    return None


_reason = _no_docker_reason()
pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        _reason is not None and os.environ.get("MEDFED_REQUIRE_DOCKER") != "1",
        reason=_reason or "",
    ),
]


def copy_project(dest: Path) -> Path:
    """The checkout's files that git knows (tracked, and untracked but not ignored)."""
    listed = _run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT)
    assert listed.returncode == 0, f"git ls-files: {listed.stderr}"
    for name in filter(None, listed.stdout.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


class Federation:
    """One Compose project in a copy of the checkout, driven through the CLI."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.folder, self.log = folder, log
        self.cli = compose_command() or ["docker-compose"]
        self.project = f"medfedtest{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "SUPERLINK_PORT": str(free_port()),
        }
        self.env.pop("STUDY", None)  # the compose file's default study unless a test sets one

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        cmd = [*self.cli, *args]
        started = time.perf_counter()
        res = _run(cmd, timeout=timeout, cwd=self.folder, env={**self.env, **(env or {})})
        output = ANSI.sub("", res.stdout + res.stderr)
        with open(self.log, "a") as fh:
            fh.write(
                f"$ {' '.join(cmd)}  ({time.perf_counter() - started:.1f} s, rc {res.returncode})\n"
            )
            fh.write(output + "\n")
        if check:
            assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-3000:]}"
        return res

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"service {service} has no container"
        return cid

    def wait_exit(self, service: str, timeout: float) -> int:
        """Exit code of a one-shot service's container; its logs on a timeout."""
        cid = self.container(service)
        try:
            res = _run(["docker", "wait", cid], timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{service} did not finish within {timeout:.0f} s:\n{self.logs(service)}"
            ) from None
        return int(res.stdout.strip())

    def logs(self, *services: str, tail: int = 40) -> str:
        res = self.compose("logs", "--no-color", "--tail", str(tail), *services, check=False)
        return ANSI.sub("", res.stdout + res.stderr)[-6000:]

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        kinds = {
            "containers": ["docker", "ps", "-a", "-q", "--filter", label],
            "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
            "networks": ["docker", "network", "ls", "-q", "--filter", label],
        }
        return {k: _run(cmd).stdout.split() for k, cmd in kinds.items()}

    def run_folder(self, name: str) -> Path:
        return self.folder / "runs" / name


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Federation:
    folder = copy_project(tmp_path_factory.mktemp("compose") / "medfed")
    log = folder.parent / "compose.log"
    federation = Federation(folder, log)
    yield federation
    federation.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
    print(f"compose log: {log}")


def _sites_of(rec) -> dict[str, object]:
    return {s.site: s for s in rec.sites}


def _study_ok(fed: Federation, out: Path, rounds: int) -> object:
    """The run folder read with the project's schema reader: complete, every round, 3 sites."""
    assert (out / "summary.json").is_file(), f"no summary.json in {out}:\n{fed.logs()}"
    run = read_run(out)  # refuses files that are not in the rounds.jsonl / summary schema
    assert run.summary.status == "complete", run.summary
    assert run.summary.sites == 3
    assert [r.round for r in run.rounds] == list(range(1, rounds + 1))
    return run


# ---------------------------------------------------------------------------------- tests
def test_build_and_certs(fed):
    # Execute: what a user types first
    fed.compose("build", timeout=BUILD_TIMEOUT_S)
    fed.compose("run", "--rm", "-T", "certs", timeout=300)
    # Assert: one image, keys made, private keys 0600
    assert _run(["docker", "image", "inspect", "medfed:latest"]).returncode == 0
    certs = fed.folder / "deploy" / "certs"
    for name in ("ca.crt", "server.pem", "server.key", "site-0.key", "site-2.pub"):
        assert (certs / name).is_file(), name
    for i in range(3):
        assert (certs / f"site-{i}" / "ca.crt").is_file()
    assert (certs / "site-1.key").stat().st_mode & 0o077 == 0


def test_demo_study_up(fed):
    # Execute: `docker compose up` (detached), then wait for the one-shot submit
    fed.compose("up", "-d", timeout=600)
    code = fed.wait_exit("submit", STUDY_TIMEOUT_S)
    # Assert: the demo's results in ./runs/demo, every round with all 3 sites
    assert code == 0, fed.logs("submit", "superlink")
    run = _study_ok(fed, fed.run_folder("demo"), rounds=3)
    for rec in run.rounds:
        sites = _sites_of(rec)
        assert sorted(sites) == ["site-0", "site-1", "site-2"], rec
        assert all(s.ok for s in sites.values()), [s.error for s in sites.values()]
        assert all(s.bytes["ciphertext_up"] > 0 for s in sites.values())  # archive exchange


def test_each_hospital_sees_only_its_own_keys_and_volume(fed):
    for i, name in enumerate(HOSPITALS):
        # Execute
        listing = fed.compose("exec", "-T", name, "ls", "-A", "/certs").stdout.split()
        own = fed.compose("exec", "-T", name, "ls", "-A", f"/certs/site-{i}").stdout.split()
        state = fed.compose("exec", "-T", name, "ls", "-A", "/app/runs/demo/sites").stdout
        # Assert: its key pair and identity, no CA key, no other site's key
        assert sorted(listing) == [f"site-{i}", f"site-{i}.key"], listing
        assert sorted(own) == ["ca.crt", "identity.crt", "identity.key"], own
        assert state.split() == [f"site-{i}"], state  # its private site folder, nobody else's


def test_consortium_study_with_a_learned_method(fed):
    # Execute: the user's command for another study, on the running federation
    fed.compose("up", "-d", timeout=600, env={"STUDY": CONSORTIUM})
    code = fed.wait_exit("submit", STUDY_TIMEOUT_S)
    # Assert
    assert code == 0, fed.logs("submit", "superlink", *HOSPITALS)
    run = _study_ok(fed, fed.run_folder("consortium"), rounds=4)
    assert run.summary.method == "learned-codec-aes" and run.summary.exchange == "consortium"
    for rec in run.rounds:
        sites = _sites_of(rec)
        assert len(sites) == 3 and all(s.ok for s in sites.values()), rec
        for s in sites.values():
            assert s.bytes["ciphertext_up"] > 0
            if rec.round >= 2:  # peers' images of the last round came down
                assert s.bytes["ciphertext_down"] > 0, (rec.round, s)
        if rec.round <= 2:  # sealed grants go up in round 1 and down to the grantees in round 2
            assert _grant_bytes(rec) > 0, f"round {rec.round}: no grant bytes recorded"
        if rec.round >= 2:
            assert _peer_recon(rec), f"round {rec.round}: no peers' reconstruction recorded"


def _grant_bytes(rec) -> int:
    """Grant bytes of a round, wherever rounds.jsonl keeps them (a byte kind with 'grant')."""
    per_site = sum(v for s in rec.sites for k, v in s.bytes.items() if "grant" in k)
    totals = sum(v for k, v in rec.totals.items() if "grant" in k)
    return max(per_site, totals)


def _peer_recon(rec) -> dict:
    """Peers' reconstruction (a key with 'peer' in the round's extras or a site's record)."""
    found = {k: v for k, v in rec.extra.items() if "peer" in k}
    for s in rec.sites:
        found |= {f"{s.site}.{k}": v for k, v in vars(s).items() if "peer" in k and v}
    return found


def test_hospital_stopped_in_round_2_fails_that_round_and_rejoins(fed):
    # Prepare: a small 4-round study (the consortium's phantoms, already on each hospital's
    # volume; AES-GCM, so this check needs no grants), submitted in the background
    out = fed.run_folder("fault")
    submit = [*fed.cli, "run", "--rm", "-T", "submit", "medfed", "deploy", "submit",
              "simulations/studies/demo.toml", *FAULT_SETTINGS, "--out", "/app/runs/fault",
              "--superlink", "superlink:8000", "--root-certificates", "/certs/ca.crt",
              "--app", "/app"]  # fmt: skip
    fed.compose("up", "-d", "superlink", "register", *HOSPITALS, timeout=600)  # (already up)
    victim = fed.container("hospital-1")
    deadline = time.monotonic() + STUDY_TIMEOUT_S
    with open(fed.log, "a") as log:
        proc = subprocess.Popen(
            submit, cwd=fed.folder, env=fed.env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            # Execute: stop hospital-1 once round 1 is over (round 2 starts then) ...
            _wait_for(out, _round_1_over, deadline, proc, "the end of round 1")
            assert _run(["docker", "stop", victim], timeout=120).returncode == 0
            # ... and start it again once round 2 is recorded
            _wait_for(out, lambda ev: _recorded(ev, 2), deadline, proc, "round 2")
            assert _run(["docker", "start", victim], timeout=120).returncode == 0
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
    # Assert: round 2 completed without site-1, with a reason; site-1 back from round 3
    assert rc == 0, fed.logs("superlink", "hospital-1")
    run = _study_ok(fed, out, rounds=4)
    by_round = {rec.round: _sites_of(rec) for rec in run.rounds}
    for rnd, sites in by_round.items():  # each site once a round, under its site name
        assert sorted(sites) == ["site-0", "site-1", "site-2"], (rnd, sorted(sites))
        assert len(run.rounds[rnd - 1].sites) == 3, (rnd, run.rounds[rnd - 1].sites)
    errors = {rnd: {name: s.error for name, s in sites.items()} for rnd, sites in by_round.items()}
    # round 2: site-1 stopped while the round ran (the SuperLink answers for it), or before
    # it began (the round waited rejoin-wait for it, then began without it)
    failed = by_round[2]["site-1"]
    assert not failed.ok and (
        "Node Unavailable" in failed.error or "not connected when it began" in failed.error
    ), failed
    assert by_round[2]["site-0"].ok and by_round[2]["site-2"].ok, errors[2]
    # round 3 begins once round 2 is recorded, when hospital-1 has just been started:
    # it waits for its SuperNode (rejoin-wait), so every site trains in rounds 3 and 4
    for rnd in (3, 4):
        assert all(site.ok for site in by_round[rnd].values()), (rnd, errors[rnd])
    events = _events(out)
    waits = [e for e in events if e["event"] == "waiting"]
    assert any(e["round"] == 3 and e["sites"] == ["site-1"] for e in waits), waits


def _events(out: Path) -> list[dict]:
    path = out / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _recorded(events: list[dict], rnd: int) -> bool:
    return any(e["event"] == "round" and e["line"]["round"] == rnd for e in events)


def _round_1_over(events: list[dict]) -> bool:
    """Round 1 recorded and its evaluation replies in (or round 2 already under way)."""
    replies = [e for e in events if e["event"] == "reply"]
    evaluated = any(
        e["round"] == 1 and e["phase"] == "evaluate" and e["done"] == e["of"] for e in replies
    )
    return _recorded(events, 1) and (evaluated or any(e["round"] == 2 for e in replies))


def _wait_for(out: Path, cond, deadline: float, proc: subprocess.Popen, what: str) -> None:
    while time.monotonic() < deadline:
        try:
            if cond(_events(out)):
                return
        except json.JSONDecodeError:
            pass  # a line being written
        assert proc.poll() is None, f"the submission ended (rc {proc.returncode}) before {what}"
        time.sleep(0.5)
    raise AssertionError(f"{what}: not reached in {out}/events.jsonl in time")


def test_down_v_leaves_nothing(fed):
    # Prepare: the federation runs (started here when the tests before did not leave it up)
    fed.compose("up", "-d", "superlink", "register", *HOSPITALS, timeout=600)
    assert fed.leftovers()["containers"] and fed.leftovers()["volumes"]
    # Execute
    fed.compose("down", "-v", "--remove-orphans", timeout=300)
    # Assert: no container, volume or network of the project
    assert fed.leftovers() == {"containers": [], "volumes": [], "networks": []}
