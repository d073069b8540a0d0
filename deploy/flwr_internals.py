"""The one door through which medfed reaches into Flower's private modules.

The deployment runtime re-implements two small pieces of Flower (the
executor: SuperExec + flwr-clientapp in one long-lived process; the SuperNode
launcher: two waits and one repair in the SuperNode's loop) on modules that
Flower does not publish as API (`flwr.supercore`, `flwr.proto`,
`flwr.supernode`, `flwr.cli`, parts of `flwr.common` and `flwr.clientapp`).
Those can change in any release. Every such name is listed here, once, with
the module it comes from and the medfed code that uses it, and every user
imports it from here:

    from deploy.flwr_internals import RetryInvoker, exponential

A name is imported on first use (importing this module imports no flwr), and
the first use checks the installed flwr against `WRITTEN_FOR`, the version
these names were read from (the one pyproject.toml pins). Another version
raises `FlwrInternalsError` listing every name, its module and its users: what
to port. `MEDFED_FLWR_INTERNALS_UNCHECKED=1` skips the version check (to try a
new flwr); a name that is then missing still raises, naming what to port.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Any

WRITTEN_FOR = "1.42.0"
UNCHECKED_ENV = "MEDFED_FLWR_INTERNALS_UNCHECKED"

# the Runtime API method that the SuperNode protects with --superexec-auth-secret-file
ACQUIRE_TASK_METHOD = "/flwr.proto.Runtime/AcquireTask"
# what a flwr-clientapp process imports first (deploy/profile_round.py times it)
CLIENTAPP_RUNTIME_MODULE = "flwr.supernode.runtime.run_clientapp"

_EXECUTOR = "deploy/executor.py"
_SUPERNODE = "deploy/supernode.py"

# our name -> (flwr module, attribute in it; None: the module itself, medfed users)
NAMES: dict[str, tuple[str, str | None, str]] = {
    # the executor: SuperExec's loop and flwr-clientapp's task, in one process
    "validate_and_resolve_root_certificates": (
        "flwr.supercore.tls",
        "validate_and_resolve_root_certificates",
        _EXECUTOR,
    ),
    "RetryInvoker": ("flwr.supercore.retry", "RetryInvoker", _EXECUTOR),
    "exponential": ("flwr.supercore.retry", "exponential", _EXECUTOR),
    "RuntimeVersionHttpInterceptor": (
        "flwr.supercore.interceptors",
        "RuntimeVersionHttpInterceptor",
        _EXECUTOR,
    ),
    "SuperExecAuthHttpInterceptor": (
        "flwr.supercore.interceptors",
        "SuperExecAuthHttpInterceptor",
        _EXECUTOR,
    ),
    "RuntimeTokenHttpInterceptor": (
        "flwr.supercore.interceptors",
        "RuntimeTokenHttpInterceptor",
        _EXECUTOR,
    ),
    "RuntimeHttpClient": ("flwr.supercore.runtime", "RuntimeHttpClient", _EXECUTOR),
    "RuntimeTracingInterceptor": (
        "flwr.supercore.runtime.tracing",
        "RuntimeTracingInterceptor",
        _EXECUTOR,
    ),
    "load_superexec_auth_secret": (
        "flwr.supercore.auth.superexec_secret",
        "load_superexec_auth_secret",
        _EXECUTOR,
    ),
    "AcquireTaskRequest": ("flwr.proto.runtime_pb2", "AcquireTaskRequest", _EXECUTOR),
    "SendTaskHeartbeatRequest": ("flwr.proto.runtime_pb2", "SendTaskHeartbeatRequest", _EXECUTOR),
    "PullTaskInputRequest": ("flwr.proto.runtime_pb2", "PullTaskInputRequest", _EXECUTOR),
    "PullAppMessagesRequest": ("flwr.proto.runtime_pb2", "PullAppMessagesRequest", _EXECUTOR),
    "Node": ("flwr.proto.node_pb2", "Node", _EXECUTOR),
    "TaskType": ("flwr.supercore.constant", "TaskType", _EXECUTOR),
    "PULL_MAX_TIME": ("flwr.supercore.constant", "PULL_MAX_TIME", _EXECUTOR),
    "HeartbeatSender": ("flwr.supercore.heartbeat", "HeartbeatSender", _EXECUTOR),
    "TaskIdentity": ("flwr.supercore.task_identity", "TaskIdentity", _EXECUTOR),
    "push_message": ("flwr.supernode.runtime.run_clientapp", "push_message", _EXECUTOR),
    "push_task_output": ("flwr.supernode.runtime.run_clientapp", "push_task_output", _EXECUTOR),
    "LoadClientAppError": ("flwr.clientapp.client_app", "LoadClientAppError", _EXECUTOR),
    "get_load_client_app_fn": ("flwr.clientapp.utils", "get_load_client_app_fn", _EXECUTOR),
    "install_from_fab": ("flwr.cli.install", "install_from_fab", _EXECUTOR),
    "get_project_dir": ("flwr.common.config", "get_project_dir", _EXECUTOR),
    "SubStatus": ("flwr.common.constant", "SubStatus", _EXECUTOR),
    "context_from_proto": ("flwr.common.serde", "context_from_proto", _EXECUTOR),
    "fab_from_proto": ("flwr.common.serde", "fab_from_proto", _EXECUTOR),
    "run_from_proto": ("flwr.common.serde", "run_from_proto", _EXECUTOR),
    "make_pull_object_fn_protobuf": (
        "flwr.supercore.inflatable.inflatable_protobuf_utils",
        "make_pull_object_fn_protobuf",
        _EXECUTOR,
    ),
    "make_confirm_message_received_fn_protobuf": (
        "flwr.supercore.inflatable.inflatable_protobuf_utils",
        "make_confirm_message_received_fn_protobuf",
        _EXECUTOR,
    ),
    "pull_and_inflate_object_from_tree": (
        "flwr.supercore.inflatable.inflatable_utils",
        "pull_and_inflate_object_from_tree",
        _EXECUTOR,
    ),
    # shared by the executor and the SuperNode launcher
    "log": ("flwr.supercore.logger", "log", f"{_EXECUTOR}, {_SUPERNODE}"),
    "ErrorCode": ("flwr.common.constant", "ErrorCode", f"{_EXECUTOR}, {_SUPERNODE}"),
    # the SuperNode launcher: its loop's module, patched in place, and the reply guard
    "supernode_loop": (
        "flwr.supernode.start_client_internal",
        None,
        f"{_SUPERNODE} (patches its `time`, `pull_objects`, `_push_messages`)",
    ),
    "flower_supernode": ("flwr.supernode.cli", "flower_supernode", _SUPERNODE),
    "make_message": ("flwr.app.message.message", "make_message", _SUPERNODE),
    "iterate_object_tree": (
        "flwr.supercore.inflatable.inflatable_object",
        "iterate_object_tree",
        _SUPERNODE,
    ),
    "get_object_tree": (
        "flwr.supercore.inflatable.inflatable_object",
        "get_object_tree",
        _SUPERNODE,
    ),
    "get_all_nested_objects": (
        "flwr.supercore.inflatable.inflatable_object",
        "get_all_nested_objects",
        f"{_SUPERNODE}, benchmarks/deploy_round.py",
    ),
    # the app bundle that `flwr run` submits
    "build_pathspec": ("flwr.cli.build", "build_pathspec", "deploy/app.py"),
    # Flower's DP noise, for the update-leakage attack (it adds what a DP mod adds)
    "clip_inputs_inplace": (
        "flwr.supercore.differential_privacy",
        "clip_inputs_inplace",
        "privacy/attack.py",
    ),
    "compute_adaptive_noise_params": (
        "flwr.supercore.differential_privacy",
        "compute_adaptive_noise_params",
        "privacy/attack.py",
    ),
    "compute_stdv": (
        "flwr.supercore.differential_privacy",
        "compute_stdv",
        "privacy/attack.py",
    ),
}

# attributes of `supernode_loop` that deploy/supernode.py replaces
SUPERNODE_LOOP_PATCHED = ("time", "pull_objects", "_push_messages")


class FlwrInternalsError(RuntimeError):
    """The installed flwr is not the one these private names were read from, or lacks one."""


def installed_version() -> str:
    """The installed flwr's version (`flwr.__version__` is read from the same metadata)."""
    try:
        return importlib.metadata.version("flwr")
    except importlib.metadata.PackageNotFoundError:
        raise FlwrInternalsError(
            f"flwr is not installed: the deployment runtime needs flwr=={WRITTEN_FOR}"
        ) from None


def _by_module() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for module, attr, users in NAMES.values():
        out.setdefault(module, []).append(f"{attr or '(the module)'} [{users}]")
    return out


def porting_list() -> str:
    """Every private flwr name medfed uses, by module, with its users (one line each)."""
    return "\n".join(
        f"  {module}: {', '.join(names)}" for module, names in sorted(_by_module().items())
    )


def check_version(version: str | None = None) -> str:
    """The installed flwr version (or `version`), if it is `WRITTEN_FOR`; otherwise
    FlwrInternalsError saying which names to port and where (unless UNCHECKED_ENV=1)."""
    version = installed_version() if version is None else version
    if version != WRITTEN_FOR and os.environ.get(UNCHECKED_ENV) != "1":
        raise FlwrInternalsError(
            f"flwr {version} is installed, but medfed's deployment runtime reaches into "
            f"private flwr modules as they are in flwr {WRITTEN_FOR} "
            f"(deploy/flwr_internals.py). Install flwr=={WRITTEN_FOR} (pyproject.toml pins "
            f"it), or port these names to flwr {version}, module by module, in "
            f"deploy/flwr_internals.py and their users, then set WRITTEN_FOR there "
            f"({UNCHECKED_ENV}=1 tries them unported):\n{porting_list()}"
        )
    return version


_checked: list[str] = []  # the version once checked


def resolve(name: str) -> Any:
    """The flwr object listed as `name` in NAMES (imported now); FlwrInternalsError
    naming the flwr module, the name and the medfed code to port when it is gone."""
    try:
        module, attr, users = NAMES[name]
    except KeyError:
        raise AttributeError(f"deploy.flwr_internals lists no flwr name {name!r}") from None
    if not _checked:
        _checked.append(check_version())
    version = _checked[0]
    try:
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
    except (ImportError, AttributeError) as exc:
        raise FlwrInternalsError(
            f"flwr {version}: {module}{'' if attr is None else '.' + attr} is gone ({exc}); "
            f"port {users}, which uses it through deploy/flwr_internals.py as {name!r}"
        ) from None
    if attr is None and name == "supernode_loop":
        lacking = [a for a in SUPERNODE_LOOP_PATCHED if not hasattr(value, a)]
        if lacking:
            raise FlwrInternalsError(
                f"flwr {version}: {module} has no {', '.join(lacking)}; port {users} "
                "(or run flower-supernode directly, without medfed's launcher)"
            )
    return value


def __getattr__(name: str) -> Any:  # `from deploy.flwr_internals import X`, on first use
    if name.startswith("__"):
        raise AttributeError(name)
    value = resolve(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *NAMES])
