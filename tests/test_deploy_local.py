"""`medfed deploy local`: real SuperLink and SuperNode processes on 127.0.0.1.

Every test checks that nothing it started is left running: the launcher
writes every pid it started or saw (with its start time) to
<log dir>/pids.json, and none of them may still be alive afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import (
    DeployError,
    LocalFederation,
    free_port,
    port_in_use,
    start_time,
    write_certificates,
    write_node_key,
)

ROOT = Path(__file__).resolve().parent.parent
MEDFED = str(Path(sys.executable).parent / "medfed")
TINY = [
    "--set",
    "num-rounds=2",
    "--set",
    "image-size=32",
    "--set",
    "phantom-patients=40",
    "--set",
    "phantom-size=64",
    "--set",
    "holdout-images=16",
    "--set",
    "share-per-round=4",
]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MEDFED_DATA_HOME": str(tmp_path / "data"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "COLUMNS": "120",
    }


def _medfed(args: list[str], tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MEDFED, *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start_medfed(args: list[str], tmp_path: Path, stderr, **popen) -> subprocess.Popen:
    """`medfed ARGS` in the background, its stderr to `stderr`, in its own process
    group (like a terminal's foreground job)."""
    return subprocess.Popen(
        [MEDFED, *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
        **popen,
    )


def _running(pids_file: Path) -> list[int]:
    """Processes from pids.json that still run (same start time: not a reused pid)."""
    if not pids_file.is_file():
        return []
    doc = json.loads(pids_file.read_text())
    out = []
    for pid, start in doc.items():
        pid = int(pid)
        if start is not None and start_time(pid) == start:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out.append(pid)
    return out


def _assert_all_stopped(fed: LocalFederation) -> None:
    deadline = time.monotonic() + 15
    while _running(fed.log_dir / "pids.json") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(fed.log_dir / "pids.json") == []
    assert fed.pids() == []


def test_a_just_stopped_federation_s_ports_count_as_free():
    """A port whose last connection is in TIME_WAIT (a federation stopped a
    moment ago) is free to a server that binds with SO_REUSEADDR, as Flower's
    do; a listening port is in use."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Flower's servers do
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use(port)
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end of the port waits in TIME_WAIT
        client.close()
    states = Path("/proc/net/tcp").read_text() if Path("/proc/net/tcp").exists() else ""
    assert f":{port:04X} " in states  # the connection is still there, waiting
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the probe did before: "in use" for a minute
    assert not port_in_use(port)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.federation
@pytest.mark.parametrize("which", ["SuperLink", "SuperNode site-0"])
def test_port_in_use_names_the_component(tmp_path, which):
    base = free_port()
    taken = base if which == "SuperLink" else base + 1
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", taken))
        except OSError:
            pytest.skip(f"port {taken} is busy on this machine")
        s.listen()
        res = _medfed(
            [
                "deploy",
                "local",
                "--sites",
                "1",
                "--port",
                str(base),
                "--out",
                str(tmp_path / "out"),
                *TINY,
            ],
            tmp_path,
            timeout=120,
        )
    assert res.returncode == 2, res.stderr
    assert f"{which}: port 127.0.0.1:{taken} is already in use" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out" / "deploy-logs" / "pids.json").exists()  # nothing was started


def _mixed_certs(tmp_path: Path) -> Path:
    """A certificate folder whose ca.crt did not sign server.pem (two runs of the script mixed)."""
    good = write_certificates(tmp_path / "good", sites=1)
    other = write_certificates(tmp_path / "other", sites=1)
    mixed = tmp_path / "mixed"
    shutil.copytree(good.folder, mixed)
    shutil.copy(other.ca, mixed / "ca.crt")
    return mixed


@pytest.mark.federation
def test_wrong_certificate_is_reported_and_cleaned_up(tmp_path):
    out = tmp_path / "out"
    res = _medfed(
        [
            "deploy",
            "local",
            "--sites",
            "1",
            "--tls",
            "--certs",
            str(_mixed_certs(tmp_path)),
            "--out",
            str(out),
            *TINY,
        ],
        tmp_path,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    err = " ".join(res.stderr.split())
    assert "TLS: the SuperLink's certificate" in err, err
    assert "is not signed by the CA in" in err
    assert "Traceback" not in res.stderr
    pids = out / "deploy-logs" / "pids.json"
    assert json.loads(pids.read_text())  # a SuperLink was started ...
    assert _none_running(pids)  # ... and stopped


@pytest.mark.federation
def test_supernode_with_wrong_ca(tmp_path):
    other = write_certificates(tmp_path / "other", sites=0)
    with LocalFederation(1, tls=True, log_dir=tmp_path / "logs", start_timeout=90) as fed:
        fed.check_ports()
        write_certificates(fed.certs.folder, sites=1)
        fed.write_connection()
        fed.start_superlink()
        fed.register_nodes()
        fed.start_supernode(0, root_certificates=other.ca)
        with pytest.raises(DeployError) as err:
            fed.wait_nodes_online()
    msg = str(err.value)
    assert msg.startswith("SuperNode site-0 stopped")
    assert "not signed by the CA" in msg
    _assert_all_stopped(fed)


@pytest.mark.federation
def test_unregistered_node_key(tmp_path):
    write_node_key(tmp_path / "stranger.key", tmp_path / "stranger.pub")
    with LocalFederation(1, tls=True, log_dir=tmp_path / "logs", start_timeout=90) as fed:
        fed.check_ports()
        write_certificates(fed.certs.folder, sites=1)
        fed.write_connection()
        fed.start_superlink()
        fed.register_nodes()
        fed.start_supernode(0, private_key=tmp_path / "stranger.key")
        with pytest.raises(DeployError) as err:
            fed.wait_nodes_online()
    msg = str(err.value)
    assert msg.startswith("SuperNode site-0 stopped")
    assert "not registered" in msg
    _assert_all_stopped(fed)


@pytest.mark.federation
def test_unreachable_superlink(tmp_path):
    with LocalFederation(1, log_dir=tmp_path / "logs", start_timeout=90) as fed:
        fed.start_supernode(0)  # no SuperLink at fed.address
        with pytest.raises(DeployError) as err:
            fed.wait_nodes_online()
    assert "SuperNode site-0 stopped" in str(err.value)
    assert "cannot reach the SuperLink" in str(err.value)
    _assert_all_stopped(fed)


# ------------------------------------------------------------------------------ it works
@pytest.mark.federation
def test_superlink_accepts_the_generated_chain(tmp_path):
    """Certificates from the script: a TLS SuperLink with node auth, SuperNodes connect."""
    certs = write_certificates(tmp_path / "certs", sites=2)
    with LocalFederation(
        2, tls=True, certs=certs.folder, log_dir=tmp_path / "logs", start_timeout=120
    ) as fed:
        fed.start()
        assert len(fed.supernodes()) == 2
        log = fed.components[0].log_text()
        assert f"https://127.0.0.1:{fed.port}" in log  # TLS on
        fed.check_alive()
        res = fed.flwr("supernode", "list", fed.connection, "--format", "json")
        nodes = json.loads(res.stdout[res.stdout.index("{") :])["nodes"]
        assert sorted(n["status"] for n in nodes) == ["online", "online"]
    _assert_all_stopped(fed)


def _none_running(pids_file: Path, timeout_s: float = 10.0) -> bool:
    """No process from pids.json still runs, waiting at most timeout_s for the
    last ones to be reaped (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while _running(pids_file):
        if time.monotonic() > deadline:
            print("still running:", _running(pids_file))
            return False
        time.sleep(0.1)
    return True


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default action.

    A process started in the background by a non-interactive shell (`cmd &`,
    `( ... &)`, most CI runners and job launchers) inherits SIGINT *ignored*,
    and so does every process it starts, through exec. Python then installs
    no KeyboardInterrupt handler, a SIGINT is a no-op and the study runs to
    its end with exit code 0: how this test failed when pytest itself was
    started that way. Ctrl-C in a terminal reaches a foreground process whose
    SIGINT is not ignored; this recreates that.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_mask(pid: int, field: str) -> int:
    """SigIgn / SigCgt of a process from /proc: bit n-1 set for signal n."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s*([0-9a-f]+)$", text, flags=re.M).group(1), 16)


def _stop_leftovers(proc: subprocess.Popen, pids_file: Path) -> None:
    """After a failure: stop medfed (it cleans up on SIGTERM), then what it started, by pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in _running(pids_file):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.federation
def test_ctrl_c_stops_everything(tmp_path):
    """SIGINT while the study runs: exit code 130, every process the deployment started stops.

    The signal is sent at a state the deployment reports (round 1 is in
    rounds.jsonl: SuperLink, SuperNode, ServerApp and ClientApp processes are
    all up), and the study has 1000 rounds, so it cannot finish first.
    """
    out = tmp_path / "out"
    rounds, pids = out / "rounds.jsonl", out / "deploy-logs" / "pids.json"
    long_study = [x if x != "num-rounds=2" else "num-rounds=1000" for x in TINY]
    stderr = tmp_path / "medfed.err"
    with open(stderr, "wb") as err_fh:
        proc = _start_medfed(
            ["deploy", "local", "--sites", "1", "--out", str(out), *long_study],
            tmp_path,
            err_fh,
            preexec_fn=_default_sigint,
        )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if rounds.is_file() and rounds.read_text().strip():
                break
            time.sleep(0.5)
        assert proc.poll() is None, stderr.read_text()[-2000:]
        assert rounds.read_text().strip(), "no round done in 300 s: " + stderr.read_text()[-2000:]
        sigint_bit = 1 << (signal.SIGINT - 1)
        assert not _signal_mask(proc.pid, "SigIgn") & sigint_bit  # not ignored ...
        assert _signal_mask(proc.pid, "SigCgt") & sigint_bit  # ... Python's handler is set
        seen = json.loads(pids.read_text())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        stop_s = time.monotonic() - t0
    finally:
        _stop_leftovers(proc, pids)
    err = stderr.read_text()
    assert proc.returncode == 130, err[-2000:]
    assert "medfed: interrupted" in err
    assert "all processes stopped" not in " ".join(err.split())  # it did not end on its own
    # SuperLink, SuperNode and the processes they started for the run (SuperExec, apps)
    assert len(seen) > 2, seen
    assert stop_s < 30
    assert _none_running(pids)


def _flat_keys(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= _flat_keys(v, prefix + k + ".")
    return keys


@pytest.mark.federation
def test_deploy_local_tls_runs_a_study(tmp_path):
    """The acceptance run: 2 SuperNodes, TLS + node auth, 2 rounds, same files as simulation."""
    import torch
    from flwr.app import ArrayRecord

    from server.strategy import array_bytes
    from study.task import build_model

    out = tmp_path / "out"
    res = _medfed(
        ["deploy", "local", "--sites", "2", "--tls", "--out", str(out), *TINY],
        tmp_path,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    for name in ("config.json", "rounds.jsonl", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["sites"] == 2 and summary["rounds"] == 2
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [s["site"] for s in rounds[0]["sites"]] == ["site-0", "site-1"]
    assert all(s["ok"] for r in rounds for s in r["sites"])
    # bandwidth: the same fields as in simulation, and the model bytes are the model's size
    torch.manual_seed(0)
    model_bytes = array_bytes(ArrayRecord(build_model("xray").state_dict()))
    for r in rounds:
        assert set(r["totals"]) == {
            "ciphertext_up",
            "ciphertext_down",
            "model_up",
            "model_down",
            "grant_up",
            "grant_down",
        }
        for s in r["sites"]:
            assert set(s["bytes"]) == {
                "ciphertext_up",
                "ciphertext_down",
                "model_up",
                "model_down",
                "message_up",
                "message_down",
                "grant_up",
                "grant_down",
            }
            assert s["bytes"]["model_up"] == model_bytes
            assert s["bytes"]["model_down"] == 2 * model_bytes  # train + evaluate
            assert s["bytes"]["ciphertext_up"] > 0
            assert s["bytes"]["message_up"] > s["bytes"]["model_up"] + s["bytes"]["ciphertext_up"]
    # each hospital's private state folder, and TLS was on
    assert (out / "sites" / "site-0" / "key-v0.bundle").is_file()
    assert "https://" in (out / "deploy-logs" / "superlink.log").read_text()
    assert "all processes stopped" in " ".join(res.stderr.split())
    assert _none_running(out / "deploy-logs" / "pids.json")


@pytest.mark.slow
def test_deployment_bandwidth_equals_simulation(tmp_path):
    """Byte for byte: rounds.jsonl of a deployed study equals the simulated one.
    AES-GCM: a learned codec fitted in another process (other torch threads) codes
    the same images in a few bytes more or less, which is not what this compares."""
    dep, sim = tmp_path / "dep", tmp_path / "sim"
    tiny = [*TINY, "--set", "method=aes-gcm"]
    res = _medfed(["deploy", "local", "--sites", "2", "--out", str(dep), *tiny], tmp_path, 900)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _medfed(
        ["run", "--quiet", "--set", "num-sites=2", "--out", str(sim), *tiny], tmp_path, 900
    )
    assert res.returncode == 0, res.stderr[-3000:]
    a = [json.loads(x) for x in (dep / "rounds.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (sim / "rounds.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        assert _flat_keys(ra) == _flat_keys(rb)
        assert ra["totals"] == rb["totals"]
        assert [s["bytes"] for s in ra["sites"]] == [s["bytes"] for s in rb["sites"]]
    sa = json.loads((dep / "summary.json").read_text())
    sb = json.loads((sim / "summary.json").read_text())
    assert sa["bytes"] == sb["bytes"] and sa["bytes_per_site"] == sb["bytes_per_site"]


# ------------------------------------------------------------------ a launcher killed -9
def _sleeper(*words: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", *words],
        start_new_session=True,
    )


@pytest.mark.federation
def test_the_next_start_stops_only_what_pids_json_still_names(tmp_path):
    """pids.json of a launcher killed with SIGKILL: the next start with that log folder
    stops the processes it names that still run with the recorded start time and a
    command medfed starts; a pid reused by another process (other start time) and a
    process that is not medfed's are left alone."""
    ours, reused, stranger = _sleeper("flower-supernode"), _sleeper("flwr"), _sleeper("other")
    gone = _sleeper("flwr")
    gone.kill()
    gone.wait()
    try:
        for p in (ours, reused, stranger):
            deadline = time.monotonic() + 10
            while start_time(p.pid) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        logs = tmp_path / "logs"
        logs.mkdir()
        record = {
            ours.pid: start_time(ours.pid),
            reused.pid: start_time(reused.pid) - 1,  # the recorded process was another
            stranger.pid: start_time(stranger.pid),  # right start time, not our command
            gone.pid: 12345,
        }
        (logs / "pids.json").write_text(json.dumps({str(k): v for k, v in record.items()}))
        said = []
        with LocalFederation(1, log_dir=logs, echo=said.append) as fed:
            assert ours.wait(timeout=15) == -signal.SIGTERM
            assert reused.poll() is None and stranger.poll() is None
            assert fed.components == []
        assert said == [
            f"stopped 1 process(es) an earlier deployment in {logs} left running (pids {ours.pid})"
        ]
    finally:
        for p in (ours, reused, stranger):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_children_die_with_the_launcher(tmp_path):
    """A child started with parent_death_signal gets SIGTERM when its parent is killed
    with SIGKILL (Linux), so a killed launcher leaves nothing even before the next
    start's clean-up."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    code = (
        "import subprocess, sys, time\n"
        "from deploy.processes import parent_death_signal\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " preexec_fn=parent_death_signal())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    started = start_time(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while start_time(child) == started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert start_time(child) != started  # gone (reaped by init)


def _free_ports(n: int) -> int:
    for _ in range(50):
        base = free_port()
        if base < 65000 and not any(port_in_use(base + i) for i in range(n)):
            return base
    pytest.skip(f"no {n} consecutive free ports")


@pytest.mark.federation
def test_kill_9_of_deploy_local_leaves_nothing_after_the_next_start(tmp_path):
    """`kill -9` of `medfed deploy local` once its study runs (SuperLink, SuperNode,
    executor, SuperExec and ServerApp up), then the same command again with the same
    --out and --port: it starts (the ports are free) and completes, and no process of
    the first run's pids.json is left, nor of the second's; the ports are free.
    (Two small deployments: 31 s on an idle 2-core machine, 114 s at load 10.)"""
    out = tmp_path / "out"
    pids = out / "deploy-logs" / "pids.json"
    port = _free_ports(2)
    common = ["deploy", "local", "--sites", "1", "--port", str(port), "--out", str(out)]
    long_study = [x if x != "num-rounds=2" else "num-rounds=1000" for x in TINY]
    stderr = tmp_path / "first.err"
    with open(stderr, "wb") as err_fh:
        first = _start_medfed([*common, *long_study], tmp_path, err_fh)
    seen: dict[str, int | None] = {}
    try:
        deadline = time.monotonic() + 300
        started = False  # the ServerApp runs the study
        while not started and time.monotonic() < deadline and first.poll() is None:
            started = any(e.get("event") == "start" for e in _events(out))
            time.sleep(0.2)
        assert first.poll() is None and started, stderr.read_text()[-2000:]
        while time.monotonic() < deadline:  # the launcher has recorded the ServerApp
            seen = json.loads(pids.read_text())
            if any("flwr-serverapp" in _cmdline(int(p)) for p in seen):
                break
            time.sleep(0.2)
        assert len(seen) >= 5, seen  # SuperLink, SuperNode, executor, its worker, flwr run ...
        first.kill()  # SIGKILL: no finally, no atexit, no signal handler
        first.wait()
        one_round = [x if x != "num-rounds=2" else "num-rounds=1" for x in TINY]
        res = _medfed([*common, *one_round], tmp_path, timeout=600)
    finally:
        _stop_leftovers(first, pids)
        left = [int(p) for p, t in seen.items() if t is not None and start_time(int(p)) == t]
        for pid in left:  # after a failure: the first run's leftovers, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "all processes stopped" in " ".join(res.stderr.split())
    assert left == [], left
    assert _none_running(pids)
    assert not any(port_in_use(port + i) for i in range(2))


# ------------------------------------------------------------ a hospital's process killed
def _events(out: Path) -> list[dict]:
    path = out / "events.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


@pytest.mark.slow
def test_a_killed_supernode_fails_its_site_and_the_study_goes_on(tmp_path):
    """3 sites, min-sites 2, TLS and SuperNode authentication: site 1's SuperNode is
    killed (SIGKILL from outside) while site 1 trains in round 2 (a stall keeps it busy)
    and both other sites have replied.
    The deployment used to stop the whole study ("SuperNode site-1 was killed by signal
    SIGKILL from outside medfed"); now round 2 records site 1 failed with the reason,
    its SuperNode is started again once the SuperLink counts the old node as gone (its
    key activates one node at a time), site 1 trains in round 3 and the study
    completes."""
    out = tmp_path / "out"
    study = [x if x != "num-rounds=2" else "num-rounds=3" for x in TINY]
    study += ["--set", "min-sites=2"]
    study += ["--set", "fault-sites=1:round=2:stall=90"]
    stderr = tmp_path / "medfed.err"
    pids = out / "deploy-logs" / "pids.json"
    with open(stderr, "wb") as err_fh:
        proc = _start_medfed(
            ["deploy", "local", "--sites", "3", "--tls", "--out", str(out), *study],
            tmp_path,
            err_fh,
        )
    try:
        deadline = time.monotonic() + 600
        replied = False
        while not replied and time.monotonic() < deadline and proc.poll() is None:
            replied = any(
                e.get("event") == "reply"
                and e.get("round") == 2
                and e.get("phase") == "train"
                and e.get("done") == 2
                for e in _events(out)
            )
            time.sleep(0.3)
        assert replied, stderr.read_text()[-3000:]
        (node,) = [
            int(p)
            for p in json.loads(pids.read_text())
            if "deploy.supernode" in _cmdline(int(p)) and "partition-id=1 " in _cmdline(int(p))
        ]
        os.kill(node, signal.SIGKILL)
        assert proc.wait(timeout=900) == 0, stderr.read_text()[-4000:]
    finally:
        _stop_leftovers(proc, pids)
    err = " ".join(stderr.read_text().split())
    assert "SuperNode site-1 was killed by signal SIGKILL from outside medfed" in err
    assert "starting it again in 62 s, once the SuperLink counts its node as gone" in err
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    by_site = [{s["site"]: s for s in r["sites"]} for r in rounds]
    assert all(s["ok"] for s in by_site[0].values())
    assert by_site[1]["site-0"]["ok"] and by_site[1]["site-2"]["ok"]
    assert not by_site[1]["site-1"]["ok"] and by_site[1]["site-1"]["error"]
    print("round 2, site-1:", by_site[1]["site-1"]["error"])
    assert all(s["ok"] for s in by_site[2].values())  # the restarted SuperNode's site is back
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rounds"] == 3
    assert _none_running(pids)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_deploy_local_takes_resume(tmp_path):
    """`medfed deploy local --resume` means what `medfed run --resume` does (and what
    `--set resume=true` already did): the study's resume key is set."""
    import argparse

    from simulations.commands import deploy

    parser = argparse.ArgumentParser()
    deploy.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["deploy", "local", "--resume", "--out", str(tmp_path)])
    assert deploy._load(args).resume is True
    args = parser.parse_args(["deploy", "local", "--set", "resume=true", "--out", str(tmp_path)])
    assert deploy._load(args).resume is True
    args = parser.parse_args(["deploy", "local", "--out", str(tmp_path)])
    assert deploy._load(args).resume is False
