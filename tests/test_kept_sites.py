"""client/kept_sites.py: a long-lived app process (MEDFED_KEEP_SITES=1, set by the
deployment executor) serves every message of a run with one Site per node; elsewhere
every message builds its own; a new run drops the old run's sites."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from client.kept_sites import KEEP_SITES_ENV, KeptSites, SiteKey
from study.config import Study


def context(run_id: int = 1, site: int = 0, **run_config) -> Context:
    return Context(
        run_id=run_id,
        node_id=7,
        node_config={"partition-id": site, "num-partitions": 3, "identity-dir": "/id"},
        state=RecordDict(),
        run_config={"num-sites": 3, "grants": "all", "list": [1, 2], **run_config},
    )


def builder():
    built = []

    def build():
        built.append(object())
        return built[-1]

    return built, build


def test_site_key_names_the_run_the_study_and_the_node():
    key = SiteKey.of(context(), None)
    assert (key.run_id, key.site, key.sites, key.identity_dir) == (1, 0, 3, "/id")
    assert key == SiteKey.of(context(), None) and hash(key) == hash(SiteKey.of(context(), None))
    assert ("list", (1, 2)) in key.run_config  # a list value, hashable
    assert key != SiteKey.of(context(site=1), None)
    assert key != SiteKey.of(context(**{"num-sites": 4}), None)
    assert key != SiteKey.of(context(), Study(num_sites=3))


def test_sites_are_kept_per_key_when_keeping_is_on():
    kept, (built, build) = KeptSites(environ={KEEP_SITES_ENV: "1"}), builder()
    first = kept.get(SiteKey.of(context(), None), build)
    assert kept.get(SiteKey.of(context(), None), build) is first
    other = kept.get(SiteKey.of(context(site=1), None), build)
    assert other is not first and len(built) == 2


def test_a_new_run_drops_the_old_run_s_sites():
    kept, (_, build) = KeptSites(environ={KEEP_SITES_ENV: "1"}), builder()
    kept.get(SiteKey.of(context(run_id=1), None), build)
    kept.get(SiteKey.of(context(run_id=1, site=1), None), build)
    kept.get(SiteKey.of(context(run_id=2), None), build)
    assert {k.run_id for k in kept.sites} == {2} and len(kept.sites) == 1


def test_nothing_is_kept_when_keeping_is_off():
    for environ in ({}, {KEEP_SITES_ENV: "0"}):
        kept, (built, build) = KeptSites(environ=environ), builder()
        a = kept.get(SiteKey.of(context(), None), build)
        b = kept.get(SiteKey.of(context(), None), build)
        assert a is not b and len(built) == 2 and kept.sites == {}
