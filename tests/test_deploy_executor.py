"""The long-lived ClientApp executor (deploy/executor.py) against Flower's own
`flwr-clientapp`: the same replies, the same error replies, one process per site.

A small Flower app (written to tmp_path; no torch) says which process ran
each message and raises when asked; the same plan runs on a SuperNode with
Flower's subprocess isolation and on one with the executor, and the
ServerApp's view of the replies must be the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import LocalFederation, descendants, free_port

pytestmark = pytest.mark.federation
MEDFED = str(Path(sys.executable).parent / "medfed")

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "executorprobe"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "medfedtest"

[tool.flwr.app.components]
serverapp = "probeserver:app"
clientapp = "{clientapp}"

[tool.flwr.app.config]
out = ""
plan = "train"
num-cpus = 2  # the executor sets torch threads to it
"""

CLIENT = '''\
"""Replies with the pid that ran the message and what this process has seen."""
import os

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
notapp = "not a ClientApp"  # what the broken FAB names: its load fails
SEEN = []  # module state: survives between messages only in a long-lived process


def _reply(msg, context):
    SEEN.append(msg.metadata.message_type)
    count = int(context.state["count"]["n"]) + 1 if "count" in context.state else 1
    context.state["count"] = ConfigRecord({"n": count})
    result = {"pid": os.getpid(), "seen": len(SEEN), "node-count": count}
    result["threads"] = __import__("torch").get_num_threads() if "torch" in __import__(
        "sys").modules else -1
    return Message(content=RecordDict({"result": ConfigRecord(result)}), reply_to=msg)


@app.train()
def train(msg, context):
    return _reply(msg, context)


@app.evaluate()
def evaluate(msg, context):
    return _reply(msg, context)


@app.query("raise")
def boom(msg, context):
    raise ZeroDivisionError("on purpose")
'''

SERVER = '''\
"""Sends each message of `plan` to every node; writes the replies to `out`."""
import json
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    deadline = time.monotonic() + 120
    nodes = []
    while not nodes and time.monotonic() < deadline:
        nodes = sorted(grid.get_node_ids())
        time.sleep(0.2)
    rows = []
    for step, kind in enumerate(str(cfg["plan"]).split(",")):
        msgs = [
            Message(content=RecordDict({"config": ConfigRecord({"step": step})}),
                    message_type=kind, dst_node_id=n)
            for n in nodes
        ]
        ids = [i for i in grid.push_messages(msgs) if i]
        replies = []
        while len(replies) < len(ids) and time.monotonic() < deadline + 300:
            replies += grid.pull_messages([i for i in ids if i not in
                                           {r.metadata.reply_to_message_id for r in replies}])
            time.sleep(0.05)  # Flower's send_and_receive polls every 3 s
        for r in replies:
            row = {"step": step, "kind": kind}
            if r.has_error():
                row["error"] = [int(r.error.code), r.error.reason]
            else:
                row.update(dict(r.content["result"]))
            rows.append(row)
    with open(str(cfg["out"]), "w") as fh:
        json.dump(rows, fh)
'''


def _app(folder: Path, clientapp: str = "probeclient:app") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(clientapp=clientapp))
    (folder / "probeclient.py").write_text(CLIENT)
    (folder / "probeserver.py").write_text(SERVER)
    return folder


def _run(fed: LocalFederation, app: Path, out: Path, plan: str) -> list[dict]:
    t0 = time.monotonic()
    res = fed.flwr(
        "run",
        str(app),
        fed.connection,
        "--run-config",
        f"out='{out}' plan='{plan}'",
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = _rows(out, 300)
    print(f"run {plan}: {time.monotonic() - t0:.1f} s")
    return rows


def _rows(out: Path, timeout_s: float, while_waiting=lambda: None) -> list[dict]:
    """The ServerApp's rows once `out` holds them in full (a JSON document that parses:
    one still being written does not), within the deadline; `while_waiting` runs
    between looks (e.g. the deployment's watch)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return json.loads(out.read_text())
        except (OSError, ValueError):
            assert time.monotonic() < deadline, f"{out}: no complete result in {timeout_s} s"
        while_waiting()
        time.sleep(0.2)


def _probe(tmp_path: Path, isolation: str) -> tuple[list[dict], LocalFederation]:
    """Runs on one SuperNode: the plan, then a FAB whose ClientApp cannot load; with
    the executor also the first FAB again (its modules must be reloaded)."""
    good = _app(tmp_path / "good")
    broken = _app(tmp_path / "broken", clientapp="probeclient:notapp")
    fed = LocalFederation(
        1, log_dir=tmp_path / f"logs-{isolation}", start_timeout=120, isolation=isolation
    )
    with fed:
        fed.start()
        rows = _run(fed, good, tmp_path / f"{isolation}-1.json", "train,query.raise,evaluate")
        rows += _run(fed, broken, tmp_path / f"{isolation}-2.json", "train")
        if isolation == "process":
            rows += _run(fed, good, tmp_path / f"{isolation}-3.json", "train")
            # the SuperNode goes away: its executor stops on its own, exit 0
            fed.supernodes()[0].proc.send_signal(signal.SIGTERM)
            executor = fed.executors()[0].proc
            assert executor.wait(timeout=60) == 0, fed.executors()[0].log_text()[-2000:]
    return rows, fed


def test_executor_replies_like_flwr_clientapp(tmp_path):
    # Execute: the same runs with Flower's process per message and with the executor
    flower, _ = _probe(tmp_path, "subprocess")
    ours, fed = _probe(tmp_path, "process")

    # Assert: what the ServerApp saw is the same, apart from which process ran it
    def view(rows: list[dict]) -> list[tuple]:
        return [
            (r["step"], r["kind"], tuple(r.get("error", ())), r.get("node-count")) for r in rows
        ]

    assert view(ours[: len(flower)]) == view(flower)
    errors = [r["error"] for r in ours if "error" in r]
    assert errors == [
        [2, "<class 'ZeroDivisionError'>:<'on purpose'>"],  # CLIENT_APP_RAISED_EXCEPTION
        [1, "An exception was raised when attempting to load `ClientApp`"],  # LOAD_CLIENT_APP
    ]
    assert [r["node-count"] for r in ours if "pid" in r] == [1, 2, 1]  # context.state kept
    # Flower: a new process per message; the executor: one process for all of them
    flower_pids = [r["pid"] for r in flower if "pid" in r]
    assert len(set(flower_pids)) == len(flower_pids) == 2
    assert all(r["seen"] == 1 for r in flower if "pid" in r)
    our_pids = {r["pid"] for r in ours if "pid" in r}
    assert len(our_pids) == 1
    assert [r["seen"] for r in ours if "pid" in r] == [1, 2, 1]  # a new FAB: modules reloaded
    assert all(r["threads"] == 2 for r in ours if "pid" in r)  # num-cpus, not OMP's 1
    tasks = [json.loads(x) for x in fed.task_log(0).read_text().splitlines()]
    assert [(t["message_type"], t["sub_status"]) for t in tasks] == [
        ("train", "completed"),
        ("query.raise", "failed"),
        ("evaluate", "completed"),
        ("train", "failed"),
        ("train", "completed"),
    ]
    assert {t["pid"] for t in tasks} == our_pids


def _wait_for(path: Path, text: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text() if path.is_file() else ""):
        assert time.monotonic() < deadline, f"{text!r} not in {path}"
        time.sleep(0.2)


def test_executor_runs_and_stops_with_its_supernode(tmp_path):
    """`medfed deploy executor -- flower-supernode ...` (a compose hospital's entry
    point): SIGTERM stops both, exit 0; the SuperNode stopping stops the executor; a
    SuperNode that refuses the executor's auth secret stops both, with the reason."""
    with LocalFederation(1, log_dir=tmp_path / "logs", start_timeout=120) as fed:
        fed.start_superlink()
        (tmp_path / "secret").write_bytes(b"the SuperNode's")
        (tmp_path / "other").write_bytes(b"not the same")
        for case in ("sigterm", "supernode-dies", "wrong-secret"):
            port = free_port()
            node = [fed.tool("flower-supernode"), "--superlink", fed.address, "--insecure"]
            node += ["--isolation", "process", "--port", str(port)]
            executor = [MEDFED, "deploy", "executor", "--supernode", f"127.0.0.1:{port}"]
            if case == "wrong-secret":  # AcquireTask is authenticated: a wrong secret is final
                node += ["--superexec-auth-secret-file", str(tmp_path / "secret")]
                executor += ["--superexec-auth-secret-file", str(tmp_path / "other")]
            log = tmp_path / f"{case}.log"
            with open(log, "wb") as fh:
                proc = subprocess.Popen(
                    [*executor, "--", *node],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=fed.env(tmp_path / f"{case}-home"),
                    cwd=tmp_path,
                    start_new_session=True,
                )
            try:
                if case == "wrong-secret":
                    assert proc.wait(timeout=120) == 1
                    text = log.read_text()
                    assert "refused AcquireTask (HTTP 401)" in text
                    assert "not restarting it" in text
                    continue
                _wait_for(log, "connected to the SuperNode")
                children = descendants(proc.pid)
                if case == "sigterm":
                    proc.send_signal(signal.SIGTERM)
                    assert proc.wait(timeout=60) == 0
                else:
                    supernode = next(p for p in children if "deploy.supernode" in _cmdline(p))
                    os.kill(supernode, signal.SIGKILL)
                    assert proc.wait(timeout=60) == 128 + signal.SIGKILL  # as a shell says
                    assert "the SuperNode stopped" in log.read_text()
                deadline = time.monotonic() + 30
                while [p for p in children if _cmdline(p)] and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert [p for p in children if _cmdline(p)] == []  # worker and SuperNode gone
            finally:
                if proc.poll() is None:
                    proc.kill()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_executor_bad_address_is_one_line(tmp_path):
    res = subprocess.run(
        [MEDFED, "deploy", "executor", "--supernode", "nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "--supernode 'nowhere': expected HOST:PORT" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("option", ["--poll", "--gone-after"])
def test_executor_rejects_non_positive_times(option):
    res = subprocess.run(
        [MEDFED, "deploy", "executor", option, "0"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and f"{option} must be > 0" in res.stderr


TINY = ["num-rounds=2", "image-size=32", "phantom-patients=40", "phantom-size=64"]
TINY += ["holdout-images=16", "share-per-round=4"]


def _deploy_local(tmp_path: Path, settings: list[str], timeout: float) -> tuple[list, Path]:
    """`medfed deploy local --sites 2` with `settings` (k=v): its rounds and log folder."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "MEDFED_DATA_HOME": str(tmp_path / "data"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    sets = [a for kv in settings for a in ("--set", kv)]
    res = subprocess.run(
        [MEDFED, "deploy", "local", "--sites", "2", "--out", str(out), *sets],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    return rounds, out / "deploy-logs"


def test_deployed_study_runs_each_site_in_one_process(tmp_path):
    """`medfed deploy local` (executor by default): every message of a site runs in one
    process, the shard is decoded once, and a ClientApp that raises (an injected fault
    at site 1 in round 2) is a clear per-site error in rounds.jsonl."""
    rounds, logs = _deploy_local(tmp_path, [*TINY, "fault-sites=1:round=2", "min-sites=1"], 900)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(s["ok"] for s in rounds[0]["sites"])
    by_site = {s["site"]: s for s in rounds[1]["sites"]}
    assert by_site["site-0"]["ok"] and not by_site["site-1"]["ok"]
    assert "InjectedFault: site 1: injected fault in round 2" in by_site["site-1"]["error"]
    for site in (0, 1):
        tasks = [json.loads(x) for x in (logs / f"executor-site-{site}.tasks.jsonl").open()]
        kinds = [t["message_type"] for t in tasks]
        assert kinds.count("train") == 2 and kinds.count("evaluate") >= 1, kinds
        assert len({t["pid"] for t in tasks}) == 1  # one process, not one per message
        assert all(t["sub_status"] == "completed" for t in tasks)  # errors are replies
    supernode_log = (logs / "supernode-site-0.log").read_text()
    assert "flwr-clientapp" not in supernode_log and "SuperExec" not in supernode_log


@pytest.mark.slow
def test_a_crashed_worker_is_restarted_and_the_round_reports_it(tmp_path):
    """A ClientApp that kills its process (fault `crash`, site 1, round 2): that message
    gets Flower's "ClientApp stopped responding" once its heartbeat stops (as with
    flwr-clientapp), the executor starts a new worker, and site 1 is back in round 3."""
    over = [x for x in TINY if not x.startswith("num-rounds")]
    over += ["num-rounds=3", "fault-sites=1:round=2:crash", "min-sites=1"]
    rounds, logs = _deploy_local(tmp_path, over, 1200)
    site1 = [{s["site"]: s for s in r["sites"]}["site-1"] for r in rounds]
    assert [s["ok"] for s in site1] == [True, False, True]
    assert "ClientApp stopped responding" in site1[1]["error"]
    tasks = [json.loads(x) for x in (logs / "executor-site-1.tasks.jsonl").open()]
    assert len({t["pid"] for t in tasks}) == 2  # the worker before the crash, and after
    assert "died (exit 70); restarting it" in (logs / "executor-site-1.log").read_text()


# ------------------------------------------------------------- a worker killed mid-reply
KILLED_CLIENT = '''\
"""Site 1 (partition-id 1) dies while sending its first reply: after the reply's
message reached the SuperNode, before any of its objects (SIGKILL, as from outside)."""
import os
import signal
import time

import flwr.supernode.runtime.run_clientapp as runtime
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg, context):
    part = int(context.node_config["partition-id"])
    if part == 1 and int(msg.content["config"]["step"]) == 0:
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        runtime.push_objects = die  # push_message calls it after sending the message
    else:
        time.sleep(3)  # the others answer after site 1's broken reply was sent
    result = ConfigRecord({"partition": part, "pid": os.getpid()})
    return Message(content=RecordDict({"result": result}), reply_to=msg)
'''

TIMED_SERVER = '''\
"""`steps` train messages to every node, each step waiting at most `timeout` s (a
round-timeout); writes which node answered what, and when, to `out`."""
import json
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    deadline = time.monotonic() + 120
    nodes = []
    while len(nodes) < int(cfg["nodes"]) and time.monotonic() < deadline:
        nodes = sorted(grid.get_node_ids())
        time.sleep(0.2)
    rows = []
    for step in range(int(cfg["steps"])):
        msgs = [
            Message(content=RecordDict({"config": ConfigRecord({"step": step})}),
                    message_type="train", dst_node_id=n)
            for n in nodes
        ]
        ids = list(grid.push_messages(msgs))
        t0 = time.monotonic()
        got = {}
        while len(got) < len(ids) and time.monotonic() < t0 + float(cfg["timeout"]):
            for r in grid.pull_messages([i for i in ids if i not in got]):
                got[r.metadata.reply_to_message_id] = (r, time.monotonic() - t0)
            time.sleep(0.1)
        for mid, node in zip(ids, nodes):
            row = {"step": step, "node": node}
            if mid in got:
                r, row["seconds"] = got[mid]
                if r.has_error():
                    row["error"] = [int(r.error.code), r.error.reason]
                else:
                    row.update(dict(r.content["result"]))
            rows.append(row)
    with open(str(cfg["out"]), "w") as fh:
        json.dump(rows, fh)
'''


def test_a_worker_killed_while_replying_fails_only_its_site(tmp_path, monkeypatch):
    """An executor worker killed after its reply's message reached the SuperNode and
    before the reply's objects did: Flower's SuperNode forwarded the incomplete reply
    and waited for its objects forever, and the ServerApp's pull of it waited for the
    SuperLink's push session to expire (180 s) while the other sites' replies waited
    behind it: a round-timeout shorter than that failed every site. Now only that site
    fails (Flower's ClientApp-crashed error, once no object came for the stall time),
    the others answer in seconds, and the site is back for the next message."""
    monkeypatch.setenv("MEDFED_SUPERNODE_REPLY_STALL_S", "10")
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(
        PYPROJECT.format(clientapp="probeclient:app").replace(
            'plan = "train"', "steps = 2\ntimeout = 60.0\nnodes = 3"
        )
    )
    (app / "probeclient.py").write_text(KILLED_CLIENT)
    (app / "probeserver.py").write_text(TIMED_SERVER)
    out = tmp_path / "rows.json"
    with LocalFederation(3, log_dir=tmp_path / "logs", start_timeout=120) as fed:
        fed.start()
        res = fed.flwr("run", str(app), fed.connection, "--run-config", f"out='{out}'", timeout=120)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        rows = _rows(out, 400, while_waiting=fed.keep_alive)
        worker_log = fed.executors()[1].log_text()
    node_of = {r["partition"]: r["node"] for r in rows if "partition" in r}
    by = {(r["step"], r["node"]): r for r in rows}
    first = [by.get((0, node_of.get(p)), {}) for p in (0, 2)]
    # the other sites' replies came in seconds, not after site 1's broken one
    assert all("error" not in r and r.get("seconds", 1e9) < 30 for r in first), rows
    (broken,) = [r for r in rows if r["step"] == 0 and r not in first]
    assert broken.get("error", [None])[0] == 8, rows  # CLIENT_APP_CRASHED, within the step
    assert "never reached the SuperNode" in broken["error"][1]
    second = [r for r in rows if r["step"] == 1]
    assert sorted(r.get("partition", -1) for r in second) == [0, 1, 2], rows  # site 1 is back
    assert "died (exit -9); restarting it" in worker_log


SUPERVISE_STUCK_WORKER = """
import argparse, sys
from deploy import executor
executor.STOP_GRACE_S = 2.0
executor._worker_argv = lambda args: [sys.executable, "-c", (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('worker ignores SIGTERM', flush=True); time.sleep(600)")]
args = argparse.Namespace(supernode="127.0.0.1:1")
sys.exit(executor.supervise(args, []))
"""


def test_the_supervisor_honours_sigterm_with_a_worker_that_does_not(tmp_path):
    """SIGTERM to `medfed deploy executor` while its worker does not stop (one stuck in
    a pull, or ignoring SIGTERM): the supervisor waited for the worker forever (its loop
    did not look at the stop request); now it kills the worker after STOP_GRACE_S and
    exits."""
    log = tmp_path / "supervisor.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISE_STUCK_WORKER],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )
    try:
        _wait_for(log, "worker ignores SIGTERM", 60)
        (worker,) = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        deadline = time.monotonic() + 10
        while _cmdline(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _cmdline(worker)  # the worker was killed, not left behind
        assert "still runs 2 s after SIGTERM; killing it" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_killed_executor_is_started_again(tmp_path):
    """An executor killed from outside while a study runs: the deployment's watch
    (keep_alive) starts it again and says so, its worker died with it (parent-death
    signal), the new one serves the next message; stopped a 4th time within the
    window, it is not started again and the deployment stops with the reason."""
    from deploy import DeployError
    from deploy.processes import alive

    app = _app(tmp_path / "app")
    said: list[str] = []
    with LocalFederation(1, log_dir=tmp_path / "logs", start_timeout=120) as fed:
        fed.start()
        fed.echo = said.append
        old = fed.executors()[0].proc
        (worker,) = descendants(old.pid)
        os.kill(old.pid, signal.SIGKILL)
        old.wait(timeout=30)
        fed.keep_alive()
        assert fed.executors()[0].proc is not old
        assert said == [
            "executor site-0 was killed by signal SIGKILL from outside medfed; starting it "
            "again (the study goes on while min-sites hold: a round site-0 misses records "
            "it failed)"
        ]
        deadline = time.monotonic() + 15
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker)  # SIGTERM when its supervisor died
        rows = _run(fed, app, tmp_path / "after.json", "train")
        assert [("error" in r, r["node-count"]) for r in rows] == [(False, 1)]
        for _ in range(2):
            proc = fed.executors()[0].proc
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            fed.keep_alive()
        proc = fed.executors()[0].proc
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with pytest.raises(DeployError, match=r"\(4 times within 300 s\); not started again"):
            fed.keep_alive()
    assert fed.pids() == []
