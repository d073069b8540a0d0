"""A study on Flower's deployment runtime: SuperLink + one SuperNode per site.

`medfed deploy local` starts the same topology as the docker-compose demo,
as plain processes on 127.0.0.1: `flower-superlink`, one `flower-supernode`
per hospital (each with `--node-config "partition-id=i num-partitions=N"`
and its own port), TLS and SuperNode authentication when asked, then submits
the study with `flwr run . <connection>` and waits for its results. The
ServerApp and ClientApp are the very same code as in simulation, so the
result files (config.json, rounds.jsonl, summary.json, report.md) are too.

Every process is started in its own process group and stopped on exit,
error, Ctrl-C or SIGTERM (finally + atexit + signal handler); killed with
SIGKILL, its processes get SIGTERM from the kernel (PR_SET_PDEATHSIG) and the
next start with the same log folder stops what its pids.json still names.
A hospital's SuperNode or executor that stops during a study is started again
(`LocalFederation.keep_alive`): that site fails the round, not the study.

Modules, in the order they build on each other:

- `errors`: `DeployError`, the shared environment and server names;
- `flwr_internals`: the one door to private flwr modules (version-checked);
- `certificates`: CA, SuperLink certificate, SuperNode keys; `probe_tls`;
- `app`: the app bundle `flwr run` submits (`stage_app`);
- `processes`: ports, the process tree, stopping every process started;
- `diagnosis`: a one-line cause from a component's log;
- `supervisor`: `Supervisor`, processes started, watched, restarted, stopped
  (generic: no Flower);
- `federation`: `LocalFederation`, the Flower topology (ports, certificates,
  SuperLink / SuperNode / executor command lines, the `flwr` CLI) on a Supervisor;
- `submission`: `submit_study` (`flwr run`, wait for summary.json);
- `local`: `run_local_deployment`, the whole `medfed deploy local`;
- `registration`: `register_keys` with a running SuperLink;
- `executor`, `supernode`: the long-lived ClientApp executor and the SuperNode
  launcher (`medfed deploy executor`, `python -m deploy.supernode`).
"""

from __future__ import annotations

from deploy.app import APP_PACKAGES, default_app_dir, stage_app
from deploy.certificates import (
    Certificates,
    probe_tls,
    write_certificates,
    write_node_key,
)
from deploy.diagnosis import CAUSES, diagnose
from deploy.errors import ENV, REPO_ROOT, SERVER_NAMES, DeployError
from deploy.federation import LocalFederation
from deploy.local import run_local_deployment
from deploy.processes import (
    Component,
    descendants,
    free_port,
    port_in_use,
    start_time,
    stop_processes,
)
from deploy.registration import register_keys
from deploy.submission import (
    Submission,
    flwr_run_argv,
    run_config_toml,
    submit_study,
)

_start_time = start_time  # the name this had before the split into modules

__all__ = [
    "APP_PACKAGES",
    "CAUSES",
    "ENV",
    "REPO_ROOT",
    "SERVER_NAMES",
    "Certificates",
    "Component",
    "DeployError",
    "LocalFederation",
    "Submission",
    "default_app_dir",
    "descendants",
    "diagnose",
    "flwr_run_argv",
    "free_port",
    "port_in_use",
    "probe_tls",
    "register_keys",
    "run_config_toml",
    "run_local_deployment",
    "stage_app",
    "start_time",
    "stop_processes",
    "submit_study",
    "write_certificates",
    "write_node_key",
]
