"""A study's life on Flower's simulation engine when things go wrong: a silent
site, a NaN update, a dead worker, a full disk, Ctrl-C and SIGTERM. Real
studies (small): Ray, Flower's round loop, phantom files, real training."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from simulations.runner import run_simulated_study
from study.config import Study
from study.schema import read_rounds, read_summary

pytestmark = pytest.mark.federation
MEDFED = str(Path(sys.executable).parent / "medfed")


def small(out: Path, **changes) -> Study:
    base = dict(
        name="t",
        num_sites=3,
        num_rounds=3,
        min_sites=1,
        image_size=32,
        phantom_patients=48,
        phantom_size=64,
        share_per_round=4,
        holdout_images=32,
        out_dir=str(out),
    )
    return Study(**{**base, **changes}).replace()


@pytest.fixture(autouse=True)
def data_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "lifecycle-data"
    monkeypatch.setenv("MEDFED_DATA_HOME", str(home))
    return home


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {timeout_s:g} s")


def test_failing_sites_are_recorded_and_a_nan_update_stops_the_study(tmp_path):
    """One study, four faults: site 1's worker dies in round 2 (Ray restarts
    it), site 2 is silent in round 3 (round-timeout), both are back in round 4,
    and site 0's NaN update in round 5 stops the study with the reason."""
    out = tmp_path / "run"
    faults = "1:round=2:crash,2:round=3:stall=35,0:round=5:nan"
    study = small(out, num_rounds=5, min_sites=2, fault_sites=faults, round_timeout=20.0)
    with pytest.raises(Exception) as info:
        run_simulated_study(study)
    assert "training diverged in round 5" in _chain_text(info.value)
    rounds = read_rounds(out)
    assert [r.round for r in rounds] == [1, 2, 3, 4]
    ok = [{s.site: s for s in r.sites} for r in rounds]
    assert ok[1]["site-1"].ok is False and "flower error" in ok[1]["site-1"].error
    assert ok[2]["site-1"].ok  # its worker was restarted
    assert ok[2]["site-2"].ok is False
    assert "no reply within round-timeout = 20 s" in ok[2]["site-2"].error
    assert all(s.ok for s in rounds[3].sites)  # the silent site is back
    summary = read_summary(out)
    assert summary.status == "stopped" and summary.stopped_round == 5
    assert "NaN or infinite weights" in summary.reason
    json.loads((out / "summary.json").read_text(), parse_constant=_refuse)  # strict JSON
    # the progress protocol: every event on disk, in order
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "stopped"
    assert [e["line"]["round"] for e in events if e["event"] == "round"] == [1, 2, 3, 4]
    replies = [e for e in events if e["event"] == "reply" and e["round"] == 2]
    assert {e["phase"] for e in replies} == {"train", "evaluate"}
    # the data the study used, skipped files included, in inspect's shape
    report = json.loads((out / "data-report.json").read_text())
    assert report["format"] == "nih-cxr14" and report["images"] > 0 and "skipped" in report


def test_a_full_disk_fails_clearly_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    trap = out / "checkpoints" / ".round-2.npz.tmp"

    def arm() -> None:  # once round 1 is saved, round 2's checkpoint goes to a full device
        wait_for(lambda: (out / "checkpoints" / "round-1.json").exists(), 300, "round 1", 0.02)
        trap.symlink_to("/dev/full")

    import threading

    armer = threading.Thread(target=arm, daemon=True)
    armer.start()
    with pytest.raises(Exception) as info:
        run_simulated_study(small(out))
    armer.join()
    from simulations.supervise import explain

    message = explain(info.value)
    assert "the disk is full" in message and "--resume" in message, message
    round_one = (out / "rounds.jsonl").read_text().splitlines()[0]
    trap.unlink()  # space is free again
    resumed = run_simulated_study(small(out, resume=True))
    assert resumed.summary.status == "complete"
    assert [r.round for r in read_rounds(out)] == [1, 2, 3]
    assert (out / "rounds.jsonl").read_text().splitlines()[0] == round_one  # kept as written


SMALL = {
    "num-sites": 2,
    "num-rounds": 3,
    "image-size": 32,
    "phantom-patients": 48,
    "phantom-size": 64,
    "holdout-images": 16,
    "share-per-round": 4,
    "method": "aes-gcm",
}


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_signal_stops_medfed_within_10_s_and_resume_continues(tmp_path, data_home, command):
    """SIGINT (Ctrl-C) to `medfed run`, SIGTERM to `medfed sweep`, while round 2
    runs: both end within 10 s with every process they started."""
    stall = "1:round=2:stall=120"  # round 2 cannot finish before the signal
    env = {**os.environ, "MEDFED_DATA_HOME": str(data_home)}
    if command == "run":
        out = tmp_path / "run"
        args = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
        args += ["--out", str(out), "--quiet"]
        argv, sig = ["run", *args, "--set", f"fault-sites={stall}"], signal.SIGINT
    else:
        sweep = tmp_path / "sweep.toml"
        demo = Path(__file__).resolve().parent.parent / "simulations" / "studies" / "demo.toml"
        fixed = "".join(f"{k} = {json.dumps(v)}\n" for k, v in SMALL.items())
        sweep.write_text(
            f'name = "s"\nstudy = "{demo}"\nout-dir = "{tmp_path / "sweep"}"\n[set]\n{fixed}'
            f'fault-sites = "{stall}"\n[grid]\nexchange = ["archive"]\n'
        )
        out = tmp_path / "sweep" / "exchange=archive"
        argv, sig = ["sweep", str(sweep)], signal.SIGTERM
    proc = subprocess.Popen(
        [MEDFED, *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen: dict[int, float] = {}
    try:

        def round_one_done() -> bool:
            _look(proc.pid, seen)
            return (out / "rounds.jsonl").is_file() and bool(read_rounds(out))

        wait_for(round_one_done, 300, "round 1 of the study")
        assert proc.poll() is None  # round 2 stalls for 120 s: still running
        _look(proc.pid, seen)
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=30)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _alive(seen):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    err = proc.stderr.read().decode()
    assert proc.returncode == 130, err[-2000:]
    assert "medfed: interrupted" in err
    assert stop_s < 10, stop_s
    assert len(seen) > 3, seen  # the study process and Ray's
    wait_for(lambda: not _alive(seen), 10, "every process of the study ended")
    if command == "sweep":
        return
    resumed = subprocess.run(
        [MEDFED, "run", *args, "--resume"], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r.round for r in read_rounds(out)] == [1, 2, 3]
    assert read_summary(out).status == "complete"


def _look(pid: int, seen: dict[int, float]) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                seen.setdefault(p.pid, p.create_time())


def _alive(seen: dict[int, float]) -> list[psutil.Process]:
    out = []
    for pid, created in seen.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def _chain_text(exc: BaseException) -> str:
    parts, e = [], exc
    while e is not None and len(parts) < 20:
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return " | ".join(parts)


def _without_seconds(rounds) -> list[dict]:
    def strip(doc):
        if isinstance(doc, dict):
            return {k: strip(v) for k, v in doc.items() if k not in ("seconds",)}
        if isinstance(doc, list):
            return [strip(v) for v in doc]
        return doc

    return [strip(r.to_json()) for r in rounds]


def _refuse(name: str):
    raise ValueError(f"not strict JSON: {name}")
