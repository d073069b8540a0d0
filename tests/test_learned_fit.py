"""The learned encryptors' fit: the convergence criterion (encryption.nn.Convergence),
the validation hold-out, the fit curve in `fit_report`, its place in the state
(old states without it still load), the CPU-time budget. Small and fast: 32 px,
a few optimiser steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import smooth_images

import encryption.nn
from encryption import FitReport, get_encryptor
from encryption.keys import load_key_bundle, save_key_bundle
from encryption.nn import Convergence, weight_average

KEY = bytes(range(32))
TORCH_METHODS = ["deepedn", "aae-scramble", "learned-codec-aes"]


def test_convergence_waits_drops_then_stops():
    monitor = Convergence(patience=2, lr_drops=1)

    actions = [monitor.update(loss) for loss in (1.0, 0.5, 0.5, 0.499, 0.5, 0.5, 0.5)]

    # 0.499 is better but by less than 1 %: it does not reset the patience
    assert actions == ["better", "better", "wait", "drop", "wait", "stop", "stop"]
    assert monitor.best == pytest.approx(0.499) and monitor.drops == 1


def test_convergence_drops_early_when_the_time_budget_runs_out_and_keeps_the_best_weights():
    net = torch.nn.Linear(2, 1)
    monitor = Convergence(patience=5, lr_drops=2)
    monitor.update(1.0, net)
    best = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)

    late = monitor.update(2.0, net, late=True)
    again = monitor.update(3.0, net, late=True)
    monitor.restore(net)

    assert late == "drop" and again == "wait"  # the early drop happens once
    torch.testing.assert_close(net.weight.detach(), best)


def test_weight_average_warms_up_its_decay():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = weight_average(net, 0.999)
    start = net[0].weight.detach().clone()

    average.update_parameters(net)  # the first update copies
    with torch.no_grad():
        net[0].weight.add_(1.0)
    average.update_parameters(net)  # then decay min(0.999, 2 / 11)

    d = 2 / 11
    torch.testing.assert_close(average.module[0].weight, start * d + (start + 1) * (1 - d))
    assert weight_average(net, 0.0) is None


@pytest.mark.parametrize("name", TORCH_METHODS)
def test_fit_holds_out_validation_images_and_records_its_curve(name):
    images = smooth_images(16, 1, 32, 8, seed=3)
    enc = get_encryptor(name, KEY, epochs=2, min_steps=0)

    report = enc.fit(images)

    assert enc.fit_report is report and report.images == 16
    assert report.budget["train_images"] == 14 and report.budget["val_images"] == 2
    assert report.stopped in ("epochs", "converged")
    last = report.curve[-1]
    assert last["epoch"] == report.epochs and last["steps"] >= 2
    assert math.isfinite(last["val_psnr_db"]) and math.isfinite(last["fit_psnr_db"])
    assert last["val_loss"] > 0 and last["action"] in ("better", "wait", "drop", "stop")
    assert report.metrics["val_psnr_db"] == pytest.approx(last["val_psnr_db"])


def test_small_sets_have_no_hold_out_and_check_on_the_training_loss():
    images = smooth_images(6, 1, 32, 8, seed=4)
    enc = get_encryptor("aae-scramble", KEY, epochs=1, min_steps=2)

    report = enc.fit(images)

    assert report.budget["val_images"] == 0 and report.budget["train_images"] == 6
    assert "val_loss" not in report.curve[-1] and report.curve[-1]["train_loss"] > 0


@pytest.fixture
def frequent_checks(monkeypatch):
    """A convergence check every 4 optimiser steps (50 by default): short tests."""
    monkeypatch.setattr(encryption.nn, "CHECK_STEPS", 4)
    return 4


def test_a_plateau_stops_the_fit(frequent_checks):
    # lr 0: the held-out loss never improves, so the second check stops the fit
    images = smooth_images(16, 1, 32, 8, seed=5)
    enc = get_encryptor(
        "aae-scramble", KEY, epochs=500, min_steps=0, lr=0.0, patience=1, lr_drops=0,
        time_limit_s=0.0,
    )  # fmt: skip

    report = enc.fit(images)

    check_every = frequent_checks // 2  # 14 training images in batches of 8: 2 steps per epoch
    assert report.stopped == "converged"
    assert report.epochs == 2 * check_every and len(report.curve) == 2
    assert [p["action"] for p in report.curve] == ["better", "stop"]


def test_learning_rate_drops_are_applied(frequent_checks, monkeypatch):
    class Scripted(Convergence):
        actions = iter(["better", "drop", "wait", "stop"])

        def update(self, loss, module=None, late=False):
            return next(self.actions)

    monkeypatch.setattr(encryption.nn, "Convergence", Scripted)
    monkeypatch.setattr(encryption.nn, "WARMUP_STEPS", 0)
    images = smooth_images(16, 1, 32, 8, seed=6)
    enc = get_encryptor("aae-scramble", KEY, epochs=500, min_steps=0, lr=1e-3, time_limit_s=0.0)

    report = enc.fit(images)

    assert [p["action"] for p in report.curve] == ["better", "drop", "wait", "stop"]
    assert [p["lr"] for p in report.curve] == pytest.approx([1e-3, 1e-3, 2e-4, 2e-4])
    assert report.stopped == "converged"


def test_cpu_clock_budget_and_bad_clock():
    images = smooth_images(6, 1, 32, 8)
    enc = get_encryptor("deepedn", KEY, epochs=1000, min_steps=0, time_limit_s=0.5,
                        time_clock="cpu")  # fmt: skip

    report = enc.fit(images)

    assert report.stopped == "time limit" and report.budget["time_clock"] == "cpu"
    assert report.epochs < 1000
    with pytest.raises(ValueError, match="time_clock must be 'wall' or 'cpu'"):
        get_encryptor("deepedn", KEY, epochs=1, time_clock="gpu").fit(images)


@pytest.mark.parametrize("name", [*TORCH_METHODS, "invertible"])
def test_fit_report_travels_in_the_key_bundle_and_old_bundles_load(name, tmp_path):
    images = smooth_images(16, 1, 32, 8, seed=7)
    enc = get_encryptor(name, KEY, epochs=1, **({} if name == "invertible" else {"min_steps": 0}))
    enc.fit(images)
    path = save_key_bundle(tmp_path / "site.key", KEY, name, enc.state_dict())
    old_state = {k: v for k, v in enc.state_dict().items() if k != "fit_report"}

    key, method, state = load_key_bundle(path)
    reloaded = get_encryptor(method, key)
    reloaded.load_state_dict(state)
    old = get_encryptor(name, KEY)
    old.load_state_dict(old_state)

    assert reloaded.fit_report == enc.fit_report
    assert reloaded.fit_report.as_dict() == enc.fit_report.as_dict()
    assert old.fit_report is None
    blob = enc.encrypt(images[:2])
    np.testing.assert_array_equal(old.decrypt(blob), reloaded.decrypt(blob))


def test_invertible_fit_curve_and_convergence():
    images = smooth_images(24, 1, 32, 8, seed=8)
    enc = get_encryptor("invertible", KEY, epochs=40)

    report = enc.fit(images)

    assert report.stopped in ("converged", "epochs") and len(report.curve) == report.epochs
    assert all(p["val_loss"] >= 0 for p in report.curve)
    assert report.metrics["max_abs_error"] == 0.0


def test_fit_report_dict_round_trip():
    report = FitReport(
        seconds=1.5,
        epochs=3,
        images=10,
        metrics={"psnr_db": 20.0},
        curve=({"epoch": 1, "val_psnr_db": 18.0},),
        stopped="converged",
        budget={"epochs": 3, "time_clock": "wall"},
    )

    assert FitReport.from_dict(report.as_dict()) == report
    assert FitReport.from_dict({}) == FitReport()
