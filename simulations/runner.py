"""Run a study on Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from server.federation import StudyOutcome
from server.progress import Listener
from simulations.identities import provision_identities
from simulations.preflight import check_out_dir
from study.config import Study


@dataclass
class StudyResult(StudyOutcome):
    """A finished (or stopped) study, in memory: summary, rounds, final model."""

    out_dir: Path = Path()
    wall_seconds: float = 0.0


def prepare_data(study: Study) -> Path:
    """Generate phantoms once, before the sites start (they would wait on a lock)."""
    from study.data.home import study_data_root

    return study_data_root(study)


def check_resumable(study: Study) -> None:
    """A resumed study's rounds.jsonl and last checkpoint must verify before Ray
    starts (SchemaError names the line, CheckpointError says why it cannot)."""
    import torch

    from server.checkpoint import CheckpointStore
    from server.results import read_resumed_rounds
    from study.task import build_model

    out = Path(study.out_dir)
    store = CheckpointStore(out, study)
    done = {r.round for r in read_resumed_rounds(out / "rounds.jsonl")}
    rounds = [r for r in store.rounds() if r in done]
    if rounds:
        torch.manual_seed(study.seed)
        template = {k: v.numpy() for k, v in build_model(study.modality).state_dict().items()}
        # validated, not yet re-signed: the ServerApp re-signs a trusted one and says so
        store.load(rounds[-1], template, trust=study.trust_checkpoint, resign=False)


def backend_config(study: Study) -> dict:
    init_args: dict = {"logging_level": "ERROR", "log_to_driver": False}
    if study.ray_address:
        init_args["address"] = study.ray_address
    else:
        init_args["num_cpus"] = max(os.cpu_count() or 1, study.num_cpus)
        if study.num_gpus > 0:
            import torch

            gpus = torch.cuda.device_count()
            if gpus == 0:
                raise ValueError(
                    f"num-gpus = {study.num_gpus:g}, but torch {torch.__version__} sees no CUDA "
                    "GPU on this machine; set num-gpus = 0, install a CUDA build of torch, or "
                    "give a ray-address of a cluster with GPUs"
                )
            init_args["num_gpus"] = gpus
    return {
        # max_restarts: Ray starts a new process for a site whose worker died
        # (killed, out of memory); max_task_retries: a message that reached a
        # worker while it restarted (or that it died on) is run once more; a
        # message that kills its worker twice fails that site for the round
        # (Flower passes client_resources to the actors' options)
        "client_resources": {
            "num_cpus": study.num_cpus,
            "num_gpus": study.num_gpus,
            "max_restarts": -1,
            "max_task_retries": 1,
        },
        "init_args": init_args,
    }


def run_simulated_study(
    study: Study, listener: Listener | None = None, *, quiet: bool = True
) -> StudyResult:
    """Run `study` with one virtual SuperNode per site; progress events go to
    `listener` (and to events.jsonl). Returns the outcome in memory."""
    from flwr.simulation import run_simulation

    from client.client_app import build_client_app
    from server.server_app import build_server_app

    if quiet:  # the live display replaces Flower's per-round log (and its deprecation notice)
        logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    check_out_dir(study.out_dir)  # before anything starts: one clear line
    backend = backend_config(study)  # a bad GPU setting fails before any work
    if study.resume:
        check_resumable(study)
    provision_identities(study)
    prepare_data(study)
    outcomes: list[StudyOutcome] = []
    t0 = time.perf_counter()
    run_simulation(
        server_app=build_server_app(study, listener=listener, on_outcome=outcomes.append),
        client_app=build_client_app(study),
        num_supernodes=study.num_sites,
        backend_config=backend,
    )
    if not outcomes:
        raise RuntimeError(
            f"the simulation ended without a result in {study.out_dir}; see the log above"
        )
    o = outcomes[0]
    return StudyResult(o.summary, o.rounds, o.arrays, Path(study.out_dir), time.perf_counter() - t0)
