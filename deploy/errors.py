"""What every part of the deployment shares: paths, environment, the error type."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_NAMES = ("superlink", "localhost", "127.0.0.1")
# set for every Flower process we start: no pip installs at run time, logs unbuffered
ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
    # SuperExec asks its SuperNode for a new task every 0.2 s, not every 1 s (flwr's
    # default): up to 0.8 s less per message (docs/DEPLOY.md, where a round's time goes)
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
    # one torch thread per app process, as Ray gives each simulated site (num-cpus = 1):
    # N sites' default thread pools on one host oversubscribe it (training 20x slower)
    "OMP_NUM_THREADS": "1",
}


class DeployError(RuntimeError):
    """A component of the local federation failed: the message names it and the cause."""
