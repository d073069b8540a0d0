"""`flwr run .` runs the same ServerApp and ClientApp as `medfed run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _stop_local_superlink(flwr_home: Path) -> None:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(flwr_home) in cmd:
            for child in proc.children(recursive=True):
                child.send_signal(signal.SIGKILL)
            proc.send_signal(signal.SIGKILL)


@pytest.mark.federation
def test_flwr_run_runs_the_study(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "MEDFED_DATA_HOME": str(tmp_path / "data"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    out = tmp_path / "out"
    run_config = (
        f"num-sites=2 num-rounds=2 image-size=32 phantom-patients=40 phantom-size=64 "
        f"holdout-images=16 out-dir='{out}'"
    )
    try:
        proc = subprocess.run(
            [
                str(bin_dir / "flwr"),
                "run",
                ".",
                "--stream",
                "--federation-config",
                "num-supernodes=2 client-resources-num-cpus=1",
                "--run-config",
                run_config,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        _stop_local_superlink(tmp_path / "flwr-home")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(s["ok"] for r in rounds for s in r["sites"])
    assert rounds[0]["totals"]["ciphertext_up"] > 0
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("key", ["num-sites", "method"])
def test_every_run_config_key_is_declared(key):
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert key in cfg
