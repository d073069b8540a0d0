"""Registering SuperNode public keys with a running SuperLink (`medfed deploy register`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from deploy.certificates import probe_tls
from deploy.diagnosis import ANSI, diagnose
from deploy.errors import ENV, DeployError


def register_keys(
    keys: Iterable[str | Path],
    *,
    superlink: str,
    root_certificates: str | Path,
    wait: float = 120.0,
) -> list[str]:
    """`flwr supernode register` each public key; keys already registered are fine.

    Retries while the SuperLink is still starting (up to `wait` seconds).
    """
    ca = Path(root_certificates).absolute()
    if not ca.is_file():
        raise FileNotFoundError(f"--root-certificates {ca}: file not found")
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or "flwr"
    said = []
    with tempfile.TemporaryDirectory(prefix="medfed-register-") as tmp:
        home = Path(tmp)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "federation"\n\n[superlink.federation]\n'
            f'address = "{superlink}"\nroot-certificates = {json.dumps(str(ca))}\n'
        )
        env = dict(os.environ, FLWR_HOME=str(home), **ENV)
        for key in keys:
            key = Path(key).absolute()
            if not key.is_file():
                raise FileNotFoundError(f"SuperNode public key {key}: file not found")
            deadline = time.monotonic() + wait
            while True:
                try:
                    probe_tls(superlink, ca)
                except DeployError as exc:
                    if "cannot reach" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(2)
                    continue
                res = subprocess.run(
                    [flwr, "supernode", "register", str(key), "federation"],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=120,
                )
                out = " ".join(ANSI.sub("", res.stdout + res.stderr).split())
                if res.returncode == 0:
                    said.append(f"{key.name}: registered ({out[-80:]})")
                    break
                if "already in use" in out:
                    said.append(f"{key.name}: already registered")
                    break
                if time.monotonic() > deadline:
                    raise DeployError(
                        f"registering {key.name} with the SuperLink at {superlink} "
                        f"failed: {diagnose(out)}"
                    )
                time.sleep(2)
    return said
