"""A train reply that unpacks cleanly can still carry anything in its records:
missing or out-of-range metrics, a status that claims another site, shares that
are not bytes. Each is that site's refusal with a reason; the study goes on and
keeps nothing of the refused reply but its bytes and its error."""

from __future__ import annotations

import math

import pytest
from flwr.app import ConfigRecord, MetricRecord
from loopback_grid import LoopbackGrid, run_loopback_study, small_study

from client.client_app import build_client_app
from server.strategy import reply_metrics
from study import transport


def _drop_metric(name):
    def edit(content):
        metrics = content["metrics"]
        content["metrics"] = MetricRecord({k: v for k, v in metrics.items() if k != name})

    return edit


def _set_metric(name, value):
    def edit(content):
        content["metrics"][name] = value

    return edit


def _set_status(name, value):
    def edit(content):
        content["status"][name] = value

    return edit


def _metrics_as_config(content):
    content["metrics"] = ConfigRecord({k: str(v) for k, v in content["metrics"].items()})


def _no_status(content):
    del content["status"]


# (round, site) -> (edit, what the site's error says)
MUTATIONS = {
    (1, 1): (_drop_metric("num-examples"), "metric 'num-examples' is missing"),
    (1, 2): (_set_metric("train-s", -5.0), "metric 'train-s' = -5 is outside"),
    (2, 1): (_set_metric("num-examples", math.inf), "metric 'num-examples' = inf is outside"),
    (2, 2): (_metrics_as_config, "no metrics record"),
    (3, 1): (_set_status("site", "1"), "the reply claims site '1'"),
    (3, 2): (_no_status, "the reply claims site None"),
    (4, 1): (_set_status("peers", [0, 2]), "peers status is malformed"),
    (4, 2): (_set_metric("encrypt-s", math.nan), "metric 'encrypt-s' = nan is outside"),
}


def test_malformed_reply_records_fail_their_site_and_the_study_goes_on(tmp_path, monkeypatch):
    # Prepare: sites 1 and 2 send one malformed train reply a round; site 0 is honest
    study = small_study(tmp_path, monkeypatch, num_rounds=4, min_sites=1)
    honest = build_client_app(study)

    def hostile(message, context):
        reply = honest(message, context)
        site = context.node_config["partition-id"]
        if message.metadata.message_type == "train" and site != 0:
            rnd = int(message.content["config"]["server-round"])
            content = transport.unpack(reply.content)
            MUTATIONS[(rnd, site)][0](content)
            reply.content = transport.pack(content)
        return reply

    # Execute
    records = run_loopback_study(LoopbackGrid(hostile, study.num_sites), study)

    # Assert: every round ran on site 0; each malformed reply is its site's refusal
    assert [r.round for r in records] == [1, 2, 3, 4]
    for record in records:
        by_site = {s.site: s for s in record.sites}
        assert by_site["site-0"].ok and by_site["site-0"].examples > 0
        for site in (1, 2):
            bad = by_site[f"site-{site}"]
            reason = MUTATIONS[(record.round, site)][1]
            assert not bad.ok and reason in bad.error, (record.round, site, bad.error)
            assert bad.examples == 0 and bad.bytes["model_up"] == 0
            assert bad.bytes["message_up"] > 0  # it travelled, and is counted


def test_reply_metrics_checks_presence_type_and_bounds():
    good = {"num-examples": 12, "encrypt-s": 0.1, "train-s": 1.0, "decrypt-s": 0.0}
    assert reply_metrics(MetricRecord({**good, "train-loss": 0.5}), shared=False)[
        "num-examples"
    ] == pytest.approx(12)
    # a diverged loss is an honest measurement; an exact reconstruction's PSNR is +inf
    nan_loss = reply_metrics(MetricRecord({**good, "train-loss": math.nan}), shared=False)
    assert math.isnan(nan_loss["train-loss"])
    share = {"recon-mse": 0.0, "recon-psnr": math.inf, "recon-ssim": 1.0, "shared-images": 8}
    assert (
        reply_metrics(MetricRecord({**good, "train-loss": 1.0, **share}), shared=True)["recon-psnr"]
        == math.inf
    )
    with pytest.raises(ValueError, match="'recon-mse' is missing"):
        reply_metrics(MetricRecord({**good, "train-loss": 1.0}), shared=True)
    with pytest.raises(ValueError, match="'recon-ssim' = 2 is outside"):
        reply_metrics(
            MetricRecord({**good, "train-loss": 1.0, **share, "recon-ssim": 2.0}), shared=True
        )
    with pytest.raises(ValueError, match="no metrics record"):
        reply_metrics(None, shared=False)


def _set_fit_metric(name, value):
    def edit(content):
        content["fitres.metrics"][name] = value

    return edit


# SecAgg+: (round, site) -> (edit of its collect-stage reply, what the site's error says)
SECURE_MUTATIONS = {
    (1, 1): (_set_fit_metric("train-s", -5.0), "metric 'train-s' = -5 is outside"),
    (1, 3): (_set_status("site", "three"), "the reply claims site 'three'"),
}


def test_a_malformed_secagg_reply_fails_only_its_site_like_a_plain_one(tmp_path, monkeypatch):
    # Prepare: a SecAgg+ study of 5 sites (3 unmask the sum); two sites' masked-vector
    # replies carry a bad metric or claim another site
    study = small_study(
        tmp_path, monkeypatch, num_sites=5, min_sites=3, num_rounds=1, secure_aggregation="secagg+"
    )
    honest = build_client_app(study)

    def hostile(message, context):
        rnd = _collect_round(message)  # before the app: Flower's mod edits the message
        reply = honest(message, context)
        site = context.node_config["partition-id"]
        if rnd is not None and (rnd, site) in SECURE_MUTATIONS:
            content = transport.unpack(reply.content)
            SECURE_MUTATIONS[(rnd, site)][0](content)
            reply.content = transport.pack(content)
        return reply

    # Execute
    records = run_loopback_study(LoopbackGrid(hostile, study.num_sites), study)

    # Assert: each malformed reply is its site's refusal (a dropout the protocol unmasks
    # around); the other sites' sum goes on
    (record,) = records
    by_site = {s.site: s for s in record.sites}
    for (_, site), (_, reason) in SECURE_MUTATIONS.items():
        bad = by_site[f"site-{site}"]
        assert not bad.ok and reason in bad.error, (site, bad.error)
        assert "collect_masked_vectors" in bad.error
        assert bad.examples == 0 and bad.bytes["model_up"] == 0
        assert bad.bytes["message_up"] > 0  # it travelled, and is counted
    assert record.extra["secure_aggregation"]["summed"] == ["site-0", "site-2", "site-4"]
    assert all(by_site[f"site-{i}"].ok for i in (0, 2, 4))
    assert record.global_["sites_ok"] == 3


def _collect_round(message) -> int | None:
    """The round of a SecAgg+ collect-stage message (its fit config), else None."""
    content = transport.unpack(message.content)
    configs = content.config_records.get("secaggplus_configs")
    if configs is None or configs.get("stage") != "collect_masked_vectors":
        return None
    return int(content["fitins.config"]["server-round"])
