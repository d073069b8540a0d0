"""Sites kept across the messages of a run, for a long-lived ClientApp process.

medfed's deployment executor (deploy/executor.py) runs every message of a
hospital in one process and sets `MEDFED_KEEP_SITES=1`: the ClientApp then
builds a site's `Site` (its decoded shard, its keys, its fitted encryptors)
once per run and serves every later message of that run with it, instead of
decoding the shard again per message. Elsewhere (a simulation worker serves
many sites, one after the other) nothing is kept.

A kept site is found by `SiteKey`: the run, the study it was built for (the
study object given to the app, or the run config as sent), and the node's
site, number of sites and identity folder. Only the current run's sites are
kept: a message of a new run drops the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context

from client.site import Site
from study.config import Study

KEEP_SITES_ENV = "MEDFED_KEEP_SITES"  # "1": keep (set by the deployment executor)


def _frozen(value: Any) -> Any:
    """A run config value in a hashable form (lists as tuples)."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def run_config_key(context: Context) -> tuple[tuple[str, Any], ...]:
    """The run config as sent, in a hashable form (sorted pairs)."""
    return tuple(sorted((k, _frozen(v)) for k, v in dict(context.run_config).items()))


@dataclass(frozen=True)
class SiteKey:
    """What a kept site was built from: the same key, the same Site."""

    run_id: int
    study: Study | None  # the study the app was built with (None: from the run config)
    run_config: tuple[tuple[str, Any], ...]  # the run config as sent, sorted
    site: int
    sites: int | None
    identity_dir: str | None

    @classmethod
    def of(cls, context: Context, study: Study | None) -> SiteKey:
        node = context.node_config
        sites = node.get("num-partitions")
        identity = node.get("identity-dir")
        return cls(
            run_id=int(context.run_id),
            study=study,
            run_config=run_config_key(context),
            site=int(node["partition-id"]),
            sites=None if sites is None else int(sites),
            identity_dir=None if identity is None else str(identity),
        )


@dataclass
class KeptSites:
    """The sites of the current run, by SiteKey (when keeping is on)."""

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    sites: dict[SiteKey, Site] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.environ.get(KEEP_SITES_ENV) == "1"

    def get(self, key: SiteKey, build: Callable[[], Site]) -> Site:
        """The site kept under `key`, else a new one from `build` (kept when keeping is on)."""
        if not self.enabled:
            return build()
        site = self.sites.get(key)
        if site is None:
            site = build()
            for old in [k for k in self.sites if k.run_id != key.run_id]:
                del self.sites[old]
            self.sites[key] = site
        return site
