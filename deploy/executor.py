"""A long-lived ClientApp executor for one hospital (`medfed deploy executor`).

Why: Flower 1.42 runs every message a SuperNode receives in a new
`flwr-clientapp` process (SuperExec's executors are `subprocess` and
`kubernetes` only), which imports flwr, torch and the app and reloads the
site's shard for each of the two messages of a round: most of a deployed
round's time (docs/DEPLOY.md). A SuperNode started with `--isolation process`
starts no SuperExec and waits for one from outside; this is that process,
and it runs each task in itself instead of in a new process, so imports, the
loaded ClientApp and each site's decoded shard stay in memory.

What it does is Flower's own code path, step for step (flwr 1.42.0,
`supercore/superexec/run_superexec.py` and
`supernode/runtime/run_clientapp.py`): ask the SuperNode's Runtime API for a
task (`AcquireTask`, ClientApp tasks only), then with that task's token send
heartbeats while it runs, `pull_task_input` (message, context, run, FAB),
install the FAB, load the ClientApp with flwr's loader, call it, and
`push_message` the reply and `push_task_output` the status and context. The
error replies are flwr-clientapp's: an exception from the app gives
`CLIENT_APP_RAISED_EXCEPTION`, a failed load `LOAD_CLIENT_APP_EXCEPTION`,
with Flower's reason strings. What differs, and why:

- the loaded ClientApp is kept per FAB hash; the app's packages come from
  the FAB folder (as in flwr-clientapp: a package of the same name imported
  earlier from elsewhere is dropped first), and a new FAB replaces the
  previous one's modules;
- its own retry policy: flwr's HTTP retry sends SIGINT to the process on an
  invalid token (it was written for a process that lives for one task); here
  a lost task (heartbeat refused, token gone) interrupts only that task;
- `MEDFED_KEEP_SITES=1` is set, so medfed's ClientApp keeps each site's Site
  (decoded shard, keys) across the messages of a run (client/kept_sites.py);
- torch uses the study's `num-cpus` threads (`torch.set_num_threads`), as Ray
  gives each simulated site;
- the app runs in the executor's environment: no runtime dependency
  installation (medfed sets FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION).

Processes: `medfed deploy executor` is a small supervisor (no torch) that
runs the worker (`python -m deploy.executor --worker ...`) and
restarts it when it dies (a ClientApp that kills its process, e.g. the
`crash` fault: the SuperNode then answers that task with Flower's "ClientApp
crashed" error once its heartbeat stops, as with flwr-clientapp), and, given
a command after `--`, runs the hospital's SuperNode too (one container, one
entry point) and stops with it. The worker exits 0 when the SuperNode goes
away. Every task is one line in `--task-log` (JSON: pid, task, run, message
type, status, seconds), the record the benchmark and the tests read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

RUNTIME_API_DEFAULT = "127.0.0.1:9094"
POLL_S = 0.1  # between AcquireTask calls while idle (SuperExec: 1 s, medfed's SuperExec: 0.2 s)
GONE_AFTER_S = 10.0  # the SuperNode unreachable this long after it was reached: it is gone
CONNECT_WAIT_S = 300.0  # how long to wait for the SuperNode's Runtime API at start
RESTART_WINDOW_S = 60.0  # the supervisor gives up after this many worker deaths in it ...
RESTART_LIMIT = 5  # ... (a worker that cannot start would otherwise loop forever)
STOP_GRACE_S = 15.0  # after SIGTERM, a child still running this long is killed
OBJECT_POLL_S = 0.05  # first wait for a message object the SuperNode is still receiving
PRELOAD = ("numpy", "torch")
REFUSED = 3  # the worker's exit status when the SuperNode refuses it: not restarted  # imported at start, before the first task arrives


# ----------------------------------------------------------------------------- the worker
class TaskStopped(BaseException):
    """The SuperNode took the running task back (heartbeat refused, token gone).

    A BaseException, so that the app's own `except Exception` (medfed's
    site_reply_mod) does not turn it into a reply."""


@dataclass
class _Current:
    """The task being run: whether the SuperNode still holds it for us."""

    task_id: int
    lost: bool = False
    in_app: bool = False
    pulling: bool = False  # fetching its input or loading the app: a stop may interrupt it


@dataclass
class _LoadedApp:
    fab_hash: str
    project_dir: Path
    app: object
    load_s: float


@dataclass
class Worker:
    """Asks one SuperNode for ClientApp tasks and runs each in this process."""

    supernode: str = RUNTIME_API_DEFAULT
    insecure: bool = True
    root_certificates: str | None = None
    auth_secret_file: str | None = None
    poll_s: float = POLL_S
    gone_after_s: float = GONE_AFTER_S
    connect_wait_s: float = CONNECT_WAIT_S
    task_log: Path | None = None
    preload: tuple[str, ...] = PRELOAD
    tasks_served: int = 0
    _loaded: _LoadedApp | None = None
    _current: _Current | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    # -- clients ------------------------------------------------------------------
    def _certificates(self):
        from deploy.flwr_internals import validate_and_resolve_root_certificates

        return validate_and_resolve_root_certificates(self.root_certificates, self.insecure)

    def _retry(self, tries: int):
        """A bounded retry for transport hiccups; HTTP errors are final (no SIGINT)."""
        import httpx

        from deploy.flwr_internals import RetryInvoker, exponential

        def giveup(exc: Exception) -> bool:
            if isinstance(exc, httpx.HTTPStatusError):
                return exc.response.status_code not in (502, 503, 504)
            return any(t in str(exc).lower() for t in ("certificate", "ssl", "tls"))

        return RetryInvoker(
            wait_gen_factory=lambda: exponential(max_delay=2),
            recoverable_exceptions=(httpx.TransportError, httpx.HTTPStatusError),
            max_tries=tries,
            max_time=None,
            should_giveup=giveup,
        )

    def _superexec_client(self):
        from deploy.flwr_internals import (
            ACQUIRE_TASK_METHOD,
            RuntimeHttpClient,
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )

        interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if self.auth_secret_file:
            from deploy.flwr_internals import load_superexec_auth_secret

            secret = load_superexec_auth_secret(self.auth_secret_file)
            interceptors.append(
                SuperExecAuthHttpInterceptor(
                    master_secret=secret,
                    protected_methods=frozenset({ACQUIRE_TASK_METHOD}),
                )
            )
        return RuntimeHttpClient.from_server_address(
            server_address=self.supernode,
            insecure=self.insecure,
            root_certificates=self._certificates(),
            interceptors=interceptors,
            retry_invoker=self._retry(1),
        )

    def _task_client(self, token: str):
        from deploy.flwr_internals import (
            RuntimeHttpClient,
            RuntimeTokenHttpInterceptor,
            RuntimeTracingInterceptor,
            RuntimeVersionHttpInterceptor,
        )

        return RuntimeHttpClient.from_server_address(
            server_address=self.supernode,
            insecure=self.insecure,
            root_certificates=self._certificates(),
            interceptors=[
                RuntimeTracingInterceptor(),
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ],
            retry_invoker=self._retry(5),
        )

    # -- the loop ---------------------------------------------------------------------
    def serve(self) -> int:
        """Run tasks until the SuperNode goes away (0), cannot be reached (1) or refuses
        this executor (REFUSED, 3)."""
        import httpx

        from deploy.flwr_internals import AcquireTaskRequest, TaskType, log

        self._install_signals()
        os.environ["MEDFED_KEEP_SITES"] = "1"  # medfed's ClientApp keeps each site's shard
        self._preload()
        client = self._superexec_client()
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        started = time.monotonic()
        reached: float | None = None  # last time the SuperNode answered
        log(20, "medfed executor (pid %d) asks %s for ClientApp tasks", os.getpid(), self.supernode)
        try:
            while not self._stop.is_set():
                try:
                    res = client.AcquireTask(request)
                except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                    status = getattr(getattr(exc, "response", None), "status_code", None)
                    if status in (401, 403):  # retrying will not help: say so and stop
                        log(
                            40,
                            "the SuperNode at %s refused AcquireTask (HTTP %s): its "
                            "--superexec-auth-secret-file and this executor's differ",
                            self.supernode,
                            status,
                        )
                        return REFUSED
                    now = time.monotonic()
                    if reached is None and now - started > self.connect_wait_s:
                        log(40, "SuperNode Runtime API at %s unreachable: %s", self.supernode, exc)
                        return 1
                    if reached is not None and now - reached > self.gone_after_s:
                        log(20, "SuperNode at %s is gone; executor stops", self.supernode)
                        return 0
                    self._stop.wait(min(1.0, max(self.poll_s, 0.2)))
                    continue
                if reached is None:
                    log(20, "connected to the SuperNode at %s", self.supernode)
                reached = time.monotonic()
                if res.HasField("task") and res.token:
                    self.run_task(res.token, res.task)
                    reached = time.monotonic()
                    continue  # another message may be waiting
                self._stop.wait(self.poll_s)
        finally:
            client.close()
        log(20, "executor stopped (%d tasks served)", self.tasks_served)
        return 0

    def _preload(self) -> None:
        import importlib

        for name in self.preload:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)

    # -- signals: a stop from outside, a task taken back ------------------------------
    def _install_signals(self) -> None:
        def stop(signum, frame) -> None:
            self._stop.set()
            cur = self._current
            # a task is interrupted while it pulls its input or runs the app (a pull
            # waits up to flwr's 2 hours for objects that may never come), never
            # while its reply is being pushed: a half-sent reply would be worse
            if cur is not None and (cur.in_app or cur.pulling):
                cur.in_app = cur.pulling = False
                raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)

        def lost(signum, frame) -> None:
            cur = self._current
            if cur is not None and cur.lost and cur.in_app:
                cur.in_app = False
                raise TaskStopped(f"task {cur.task_id}: the SuperNode took it back")

        signal.signal(signal.SIGUSR1, lost)

    def _heartbeat_fn(self, client, current: _Current):
        """flwr's task heartbeat, except that a refused one stops only this task."""
        import _thread

        import httpx

        from deploy.flwr_internals import SendTaskHeartbeatRequest

        def fn() -> bool:
            try:
                res = client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
                ok = res.success
            except httpx.TransportError:
                return False  # retried with backoff by the HeartbeatSender
            except httpx.HTTPStatusError as err:
                if err.response.status_code in (503, 504):
                    return False
                ok = False
            if not ok and not current.lost:
                current.lost = True
                _thread.interrupt_main(signal.SIGUSR1)
            return True

        return fn

    # -- one task -----------------------------------------------------------------------
    def run_task(self, token: str, task) -> dict:
        """One ClientApp task, as flwr-clientapp runs it (flwr's run_clientapp)."""
        from flwr.app import Error, Message

        from deploy.flwr_internals import (
            ErrorCode,
            HeartbeatSender,
            LoadClientAppError,
            SubStatus,
            log,
            push_message,
            push_task_output,
        )

        t0, started_at = time.perf_counter(), time.time()
        current = self._current = _Current(task.task_id)
        client = self._task_client(token)
        heartbeat = HeartbeatSender(self._heartbeat_fn(client, current))
        message = reply = context = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        seconds = dict.fromkeys(("pull_s", "load_s", "app_s", "push_s"), 0.0)
        try:
            heartbeat.start()
            current.pulling = True
            message, context, run, fab = pull_task_input(client)
            t1 = time.perf_counter()
            seconds["pull_s"] = t1 - t0
            app, seconds["load_s"] = self._app(run, fab)
            self._threads(context)
            current.pulling = False
            current.in_app = True
            t1 = time.perf_counter()
            try:
                reply = app(message=message, context=context)
            finally:
                current.in_app = False
                seconds["app_s"] = time.perf_counter() - t1
            sub_status, details = SubStatus.COMPLETED, ""
        except TaskStopped as exc:
            log(40, "%s; its reply is dropped", exc)
            reply, details = None, "Task stopped: the SuperNode took it back"
        except KeyboardInterrupt:
            reply, details = None, "Task stopped."
        except Exception as ex:  # noqa: BLE001 - Flower's error reply, as flwr-clientapp
            e_code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            if isinstance(ex, LoadClientAppError):
                reason = "An exception was raised when attempting to load `ClientApp`"
                e_code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            log(40, "ClientApp raised an exception", exc_info=ex)
            sub_status, details = SubStatus.FAILED, reason
            if message:
                reply = Message(Error(code=e_code, reason=reason), reply_to=message)
        finally:
            current.in_app = current.pulling = False
            t1 = time.perf_counter()
            if reply is not None and context is not None and not current.lost:
                try:
                    push_message(client, reply, context)
                except Exception as ex:  # noqa: BLE001 - logged, as flwr-clientapp does
                    log(40, "Failed to push reply message", exc_info=ex)
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            seconds["push_s"] = time.perf_counter() - t1
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
            self._current = None
        self.tasks_served += 1
        record = {
            "pid": os.getpid(),
            "task_id": int(task.task_id),
            "run_id": int(task.run_id),
            "message_type": message.metadata.message_type if message is not None else "",
            "sub_status": str(sub_status),
            "details": details,
            "seconds": time.perf_counter() - t0,
            **seconds,
            "started_at": started_at,  # wall clock, to line up with the server's phases
            "tasks_served": self.tasks_served,
        }
        log(
            20,
            "task %d (run %d, %s): %s in %.2f s (pull %.2f, load %.2f, app %.2f, push %.2f)"
            " [pid %d, %d tasks]",
            record["task_id"],
            record["run_id"],
            record["message_type"] or "?",
            record["sub_status"],
            record["seconds"],
            *seconds.values(),
            record["pid"],
            self.tasks_served,
        )
        if self.task_log is not None:
            with open(self.task_log, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        return record

    def _app(self, run, fab):
        """The ClientApp of this FAB: installed and loaded once, then kept."""
        from deploy.flwr_internals import (
            get_load_client_app_fn,
            get_project_dir,
            install_from_fab,
        )

        loaded = self._loaded
        if loaded is not None and loaded.fab_hash == fab.hash_str and loaded.project_dir.is_dir():
            return loaded.app, 0.0
        t0 = time.perf_counter()
        install_from_fab(fab.content, skip_prompt=True)
        project = Path(get_project_dir(run.fab_id, run.fab_version, fab.hash_str)).absolute()
        if loaded is not None:
            forget_modules_under(loaded.project_dir)
            with contextlib.suppress(ValueError):
                sys.path.remove(str(loaded.project_dir))
            self._loaded = None
        forget_shadowed_packages(project)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        try:
            app = load(run.fab_id, run.fab_version, fab.hash_str)
        except BaseException:  # leave nothing of a FAB that did not load
            forget_modules_under(project)
            with contextlib.suppress(ValueError):
                sys.path.remove(str(project))
            raise
        load_s = time.perf_counter() - t0
        self._loaded = _LoadedApp(fab.hash_str, project, app, load_s)
        return app, load_s

    @staticmethod
    def _threads(context) -> None:
        """torch threads = the study's num-cpus (Ray gives a simulated site as many)."""
        torch = sys.modules.get("torch")
        cpus = context.run_config.get("num-cpus") if context is not None else None
        if torch is None or cpus is None:
            return
        want = max(1, int(cpus))
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)


def pull_task_input(client):
    """flwr's `pull_task_input` (supernode/runtime/run_clientapp.py), polling for the
    message's objects every 0.05 s (growing to 0.5 s) instead of flwr's 1 s (growing to
    10 s): the task exists as soon as the SuperNode has the message's header, while it
    still receives the objects from the SuperLink; a fresh flwr-clientapp arrives seconds
    later and rarely waits, a warm executor always would (1 s, then 2 s more, measured)."""
    from deploy.flwr_internals import (
        PULL_MAX_TIME,
        Node,
        PullAppMessagesRequest,
        PullTaskInputRequest,
        TaskIdentity,
        context_from_proto,
        fab_from_proto,
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
        pull_and_inflate_object_from_tree,
        run_from_proto,
    )

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run = run_from_proto(res.run)
    fab = fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    from flwr.app import Message

    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        max_time=PULL_MAX_TIME,
        max_tries_per_object=None,
        initial_backoff=OBJECT_POLL_S,
        backoff_cap=10 * OBJECT_POLL_S,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, fab


def _under(path: str | None, folder: Path) -> bool:
    if not path:
        return False
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def forget_modules_under(folder: Path) -> list[str]:
    """Drop every module loaded from `folder` from sys.modules (a replaced FAB)."""
    names = [
        n for n, m in list(sys.modules.items()) if _under(getattr(m, "__file__", None), folder)
    ]
    for name in names:
        sys.modules.pop(name, None)
    return names


def forget_shadowed_packages(project: Path) -> list[str]:
    """Drop the modules of top-level packages that `project` (a FAB folder) also holds
    but that were imported from elsewhere: the app must run the FAB's code, as in a
    fresh flwr-clientapp, where the FAB folder comes first on sys.path."""
    tops = {p.name for p in project.iterdir() if (p / "__init__.py").is_file()}
    tops |= {p.stem for p in project.glob("*.py")}
    names = []
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in tops and not _under(getattr(module, "__file__", None), project):
            names.append(name)
            sys.modules.pop(name, None)
    return names


# ------------------------------------------------------------------------- the supervisor
def _worker_argv(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "deploy.executor", "--worker"]
    argv += ["--supernode", args.supernode, "--poll", str(args.poll)]
    argv += ["--gone-after", str(args.gone_after), "--connect-wait", str(args.connect_wait)]
    if args.root_certificates:
        argv += ["--root-certificates", args.root_certificates]
    if args.superexec_auth_secret_file:
        argv += ["--superexec-auth-secret-file", args.superexec_auth_secret_file]
    if args.task_log:
        argv += ["--task-log", args.task_log]
    return argv


def supervise(args: argparse.Namespace, supernode_argv: list[str]) -> int:
    """Run the worker (restarted when it dies) and, if given, the SuperNode; stop together."""
    stopping = threading.Event()
    procs: dict[str, subprocess.Popen | None] = {"supernode": None, "worker": None}

    def on_signal(signum, frame) -> None:
        stopping.set()
        for proc in procs.values():
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def say(text: str) -> None:
        print(f"medfed executor: {text}", file=sys.stderr, flush=True)

    from deploy.processes import parent_death_signal

    if supernode_argv:
        from deploy.supernode import supernode_command

        procs["supernode"] = subprocess.Popen(
            supernode_command(supernode_argv), preexec_fn=parent_death_signal()
        )
        say(f"started the SuperNode (pid {procs['supernode'].pid})")
    deaths: list[float] = []
    code = 0
    try:
        while not stopping.is_set():
            procs["worker"] = worker = subprocess.Popen(
                _worker_argv(args), preexec_fn=parent_death_signal()
            )
            say(f"worker pid {worker.pid} serves the SuperNode at {args.supernode}")
            while worker.poll() is None:
                if stopping.is_set():  # SIGTERM: the finally below stops the children,
                    break  # killing any that is still running after STOP_GRACE_S
                node = procs["supernode"]
                if node is not None and node.poll() is not None:
                    say(f"the SuperNode stopped (exit {node.returncode}); stopping the worker")
                    on_signal(signal.SIGTERM, None)
                    worker.wait()
                    return _exit_status(node.returncode)
                time.sleep(0.5)
            if stopping.is_set():
                break
            if worker.returncode == 0:  # the SuperNode went away
                node = procs["supernode"]
                if node is None or node.poll() is not None:
                    return 0 if node is None else _exit_status(node.returncode)
                continue  # our SuperNode restarts its Runtime API: ask again
            if worker.returncode == REFUSED:
                say("the SuperNode refused this executor (see above); not restarting it")
                code = 1
                break
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
            if len(deaths) > RESTART_LIMIT:
                say(f"worker died {len(deaths)} times in {RESTART_WINDOW_S:.0f} s; giving up")
                code = 1
                break
            say(f"worker pid {worker.pid} died (exit {worker.returncode}); restarting it")
    finally:
        on_signal(signal.SIGTERM, None)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs.values():
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"pid {proc.pid} still runs {STOP_GRACE_S:g} s after SIGTERM; killing it")
                proc.kill()
                proc.wait()
    return code


def _exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


# ----------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `medfed deploy executor` (also of the worker)."""
    p.add_argument(
        "--supernode",
        default=RUNTIME_API_DEFAULT,
        metavar="HOST:PORT",
        help="the SuperNode's Runtime API (its --port; default %(default)s); the SuperNode "
        "runs with --isolation process",
    )
    p.add_argument(
        "--root-certificates",
        metavar="CA",
        help="CA of the Runtime API's TLS certificate (the SuperNode's --ssl-ca-certfile); "
        "default: plain HTTP, as the SuperNode's Runtime API serves without --ssl-certfile",
    )
    p.add_argument(
        "--superexec-auth-secret-file",
        metavar="FILE",
        help="the secret the SuperNode was given with the same option (AcquireTask auth)",
    )
    p.add_argument(
        "--task-log", metavar="FILE", help="append one JSON line per task run (pid, type, status)"
    )
    p.add_argument("--poll", type=float, default=POLL_S, help="seconds between task requests")
    p.add_argument(
        "--gone-after",
        type=float,
        default=GONE_AFTER_S,
        help="stop when the SuperNode is unreachable this long (default %(default)s s)",
    )
    p.add_argument(
        "--connect-wait",
        type=float,
        default=CONNECT_WAIT_S,
        help="wait this long for the SuperNode at start (default %(default)s s)",
    )


def validate(args: argparse.Namespace) -> None:
    """ValueError naming the option that is wrong."""
    host, sep, port = args.supernode.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--supernode {args.supernode!r}: expected HOST:PORT, e.g. 127.0.0.1:9094")
    for name in ("root_certificates", "superexec_auth_secret_file"):
        value = getattr(args, name)
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {value}: file not found")
    for name in ("poll", "gone_after", "connect_wait"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")


def worker_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.executor --worker")
    p.add_argument("--worker", action="store_true", required=True)
    add_arguments(p)
    args = p.parse_args(argv)
    return Worker(
        supernode=args.supernode,
        insecure=args.root_certificates is None,
        root_certificates=args.root_certificates,
        auth_secret_file=args.superexec_auth_secret_file,
        poll_s=args.poll,
        gone_after_s=args.gone_after,
        connect_wait_s=args.connect_wait,
        task_log=Path(args.task_log) if args.task_log else None,
    ).serve()


if __name__ == "__main__":
    sys.exit(worker_main())
