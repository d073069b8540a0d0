"""server/ledger.py: one round's state, its bytes, its stop and its record."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from loopback_grid import set_task_identity

from server.ledger import (
    NOT_CONNECTED,
    RoundLedger,
    StudyStopped,
    array_bytes,
    message_bytes,
    recon_summary,
    record_payload_bytes,
    train_summary,
    weighted_mean,
)
from study.sites import SiteId

S0, S1, S2 = SiteId.site(0), SiteId.site(1), SiteId.site(2)


def values(examples, loss, train_s=1.0, **extra):
    return {
        "num-examples": float(examples),
        "train-loss": loss,
        "train-s": train_s,
        "encrypt-s": 0.5,
        "decrypt-s": 0.25,
        **extra,
    }


def train_message(**records) -> Message:
    arrays = ArrayRecord({"w": Array(np.ones(4, dtype=np.float32))})
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1}), **records})
    return Message(content=content, dst_node_id=7, message_type="train")


# -- bytes -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    set_task_identity(monkeypatch)  # Flower's messages need one


def test_sent_counts_message_model_ciphertext_and_grant_bytes_per_site_and_kind():
    ledger = RoundLedger(1)
    peers = ConfigRecord({"site-1-images": b"x" * 30, "site-1-labels": b"y" * 5})
    keys = ConfigRecord({"grant/site-1/0": b"g" * 40, "request-grantees": "site-2"})
    msg = train_message(peers=peers, keys=keys)

    ledger.sent(S0, msg, "train")

    entry = ledger.sites[S0]
    assert entry.site == "site-0"
    assert entry.bytes["message_down"] == message_bytes(msg) > 0
    assert entry.bytes["model_down"] == array_bytes(msg.content["arrays"]) == 16 + 128
    assert entry.bytes["ciphertext_down"] == 35
    assert entry.bytes["grant_down"] == record_payload_bytes(keys) == 46
    assert ledger.by_kind == {"train": {"site-0": {"up": 0, "down": message_bytes(msg)}}}


def test_received_counts_the_reply_bytes_under_its_kind():
    ledger = RoundLedger(2)
    reply = Message(
        content=RecordDict({"metrics": MetricRecord({"num-examples": 3})}),
        dst_node_id=0,
        message_type="evaluate",
    )
    ledger.received(S1, reply, "evaluate")
    ledger.received(S1, reply, "evaluate")
    size = message_bytes(reply)
    assert ledger.sites[S1].bytes["message_up"] == 2 * size
    assert ledger.by_kind["evaluate"]["site-1"] == {"up": 2 * size, "down": 0}


# -- outcomes ----------------------------------------------------------------------------
def test_trained_reads_examples_seconds_and_loss_once():
    ledger = RoundLedger(1)
    ledger.refuse(S0, "earlier")
    entry = ledger.trained(S0, values(12, 0.7, train_s=3.0))
    assert (entry.ok, entry.error, entry.examples) == (True, None, 12)
    assert entry.seconds == {"encrypt": 0.5, "train": 3.0, "decrypt": 0.25}
    assert ledger.train_loss == {S0: 0.7}


def test_no_reply_keeps_an_earlier_reason_and_refuse_replaces_it():
    ledger = RoundLedger(1)
    ledger.no_reply(S0, "no reply within round-timeout")
    assert ledger.sites[S0].error == "no reply within round-timeout"
    ledger.refuse(S1, "claims site 2")
    ledger.no_reply(S1, "no reply")
    assert (ledger.sites[S1].ok, ledger.sites[S1].error) == (False, "claims site 2")


def test_shared_keeps_the_containers_by_site_index_and_the_reconstruction():
    ledger = RoundLedger(1)
    ledger.trained(S2, values(5, 0.1))
    ledger.shared(
        S2,
        values(5, 0.1, **{"recon-mse": 0.01, "recon-psnr": 20.0, "recon-ssim": 0.9,
                          "shared-images": 8.0}),
        b"i" * 10,
        b"l" * 3,
    )  # fmt: skip
    entry = ledger.sites[S2]
    assert entry.bytes["ciphertext_up"] == 13
    assert entry.recon == {"mse": 0.01, "psnr": 20.0, "ssim": 0.9}
    assert ledger.shares == {2: (b"i" * 10, b"l" * 3)} and ledger.shared_counts == {S2: 8.0}


def test_require_sites_stops_the_study_naming_the_failures():
    ledger = RoundLedger(4)
    ledger.trained(S0, values(3, 0.5))
    ledger.refuse(S1, "metric 'train-s' is missing")
    ledger.require_sites(1, 1, sampled=2)  # enough: nothing happens
    with pytest.raises(StudyStopped) as stop:
        ledger.require_sites(1, 2, sampled=2)
    assert stop.value.round == 4
    assert stop.value.reason == "only 1 site(s) replied in round 4; min-sites is 2"
    assert "only 1 of 2 sampled sites replied" in str(stop.value)
    assert "site-1: metric 'train-s' is missing" in str(stop.value)
    assert [f["site"] for f in stop.value.failed] == ["site-1"]


# -- the record --------------------------------------------------------------------------
def test_record_marks_missing_sampled_and_unsampled_sites_and_sorts_them():
    ledger = RoundLedger(3)
    ledger.begin_without([S2])
    ledger.trained(SiteId.site(10), values(4, 1.0))
    ledger.sites[S1] = ledger.site(S1)  # evaluated only: fraction-train left it out
    ledger.site(S0)  # sampled, never answered anything
    ledger.privacy = {"aggregation_weights": "uniform", "effective_noise_multiplier": 1.0}

    record = ledger.record({"auc": 0.5}, sampled={S0, SiteId.site(10)})

    assert [s.site for s in record.sites] == ["site-0", "site-1", "site-2", "site-10"]
    by = {s.site: s for s in record.sites}
    assert (by["site-0"].ok, by["site-0"].error) == (False, NOT_CONNECTED)
    assert (by["site-1"].ok, by["site-1"].sampled, by["site-1"].error) == (True, False, None)
    assert (by["site-2"].ok, by["site-2"].error) == (False, NOT_CONNECTED)
    assert by["site-10"].ok and by["site-10"].sampled
    assert record.global_ == {"auc": 0.5, "train_loss": 1.0, "sites_ok": 1}
    assert record.to_json()["privacy"] == {
        "aggregation_weights": "uniform",
        "effective_noise_multiplier": 1.0,
    }


def test_write_appends_the_record_through_the_writer():
    ledger, written = RoundLedger(1), []

    class Writer:
        def append_round(self, record, phases):
            written.append((record.round, phases))

    ledger.write(Writer(), ledger.record({}, sampled=set()), {"aggregate": 0.0})
    assert written == [(1, {"aggregate": 0.0})]


# -- summaries ---------------------------------------------------------------------------
def _shared(ledger, site, count, mse, psnr, ssim, ok=True):
    ledger.trained(site, values(count, 0.0))
    ledger.site(site).recon = {"mse": mse, "psnr": psnr, "ssim": ssim}
    ledger.shared_counts[site] = float(count)
    ledger.site(site).ok = ok


def test_recon_summary_weights_by_images_shared_and_reports_the_worst():
    ledger = RoundLedger(1)
    _shared(ledger, S0, 8, 0.01, 30.0, 0.9)
    _shared(ledger, S1, 24, 0.03, 20.0, 0.5)
    _shared(ledger, S2, 100, 9.0, 1.0, 0.0, ok=False)  # a failed site is left out
    out = recon_summary(ledger)
    assert out["recon_mse_mean"] == pytest.approx((8 * 0.01 + 24 * 0.03) / 32)
    assert out["recon_psnr_mean"] == pytest.approx((8 * 30 + 24 * 20) / 32)
    assert (out["recon_mse_worst"], out["recon_psnr_worst"], out["recon_ssim_worst"]) == (
        0.03,
        20.0,
        0.5,
    )


def test_recon_summary_of_an_exact_reconstruction_is_the_plain_mean():
    ledger = RoundLedger(1)
    _shared(ledger, S0, 8, 0.0, math.inf, 1.0)
    _shared(ledger, S1, 24, 0.02, 25.0, 0.8)
    out = recon_summary(ledger)
    assert out["recon_psnr_mean"] == math.inf and out["recon_psnr_worst"] == 25.0
    assert recon_summary(RoundLedger(1)) == {}


def test_train_summary_is_the_example_weighted_loss_of_the_sites_that_trained():
    ledger = RoundLedger(1)
    ledger.trained(S0, values(10, 1.0))
    ledger.trained(S1, values(30, 2.0))
    ledger.trained(S2, values(60, 100.0))
    ledger.refuse(S2, "refused later")
    assert train_summary(ledger) == {"train_loss": pytest.approx(1.75), "sites_ok": 2}
    assert train_summary(RoundLedger(1)) == {}


def test_weighted_mean_skips_empty_sites_and_values_that_are_not_finite():
    rows = [
        {"num-examples": 10, "auc": 0.5, "loss": math.nan, "only-here": 1.0},
        {"num-examples": 30, "auc": 0.9, "loss": 2.0},
        {"num-examples": 0},  # a site with no test images
    ]
    out = weighted_mean(rows)
    assert set(out) == {"auc", "loss"}  # only the metrics every row has
    assert out["auc"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)
    assert out["loss"] == 2.0  # the NaN is left out of its mean
    assert math.isnan(weighted_mean([{"num-examples": 1, "x": math.inf}])["x"])
    assert weighted_mean([{"num-examples": 0, "x": 1.0}]) == {}
