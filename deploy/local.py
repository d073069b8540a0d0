"""`medfed deploy local`: a study run end to end on a `LocalFederation`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from deploy.errors import ENV
from deploy.federation import LocalFederation
from deploy.submission import submit_study
from study.config import Study


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
    isolation: str = "process",
) -> dict:
    """Run `study` on a local SuperLink + SuperNodes; return summary.json's content.

    `sites` (default: the study's num-sites) SuperNodes are started and the
    study's num-sites is set to it. Logs of every component go to
    `<out-dir>/deploy-logs/`. Every process is stopped before this returns.
    `isolation`: "process" (a long-lived executor per SuperNode) or "subprocess"
    (Flower's: a new app process per message); see LocalFederation.
    """
    from simulations.identities import provision_identities
    from simulations.runner import prepare_data
    from study.data.home import data_home

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
        isolation=isolation,
    ) as fed:
        fed.check_ports()  # before the (slow) data preparation
        if certs is not None and fed.certs is not None:
            fed.certs.check(fed.sites)
        echo("preparing the study's data (phantoms are generated once)")
        prepare_data(study)  # before the sites start: they would wait on each other's lock
        # the study CA and each site's identity (its key made in its own state folder)
        provision_identities(study)
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
            watch=fed.keep_alive,  # a site's stopped process is started again
            progress=progress,
            timeout=timeout,
            flwr=fed.tool("flwr"),
            log=fed.log_dir / "flwr-run.log",
            started=fed.track,
        )
    summary = dict(sub.summary)
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["run_id"] = sub.run_id
    return summary
