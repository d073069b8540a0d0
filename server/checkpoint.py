"""Checkpoints that are data, never code.

After each round the server writes two files:

    checkpoints/round-N.npz    every array: the global model ("model/<name>")
                               and the strategy's array state
                               ("strategy/<path>/<key>"); read with
                               allow_pickle=False
    checkpoints/round-N.json   the round, the study's hash, the strategy's
                               scalar state, the consortium's pending shares
                               (archive digests), the npz's sha256, and an
                               HMAC-SHA256 over all of it

Nothing is ever unpickled. `--resume` refuses, with a message that says why, a
checkpoint written for another study configuration (its hash differs), one
whose files were changed (sha256 or HMAC mismatch) and one whose arrays do
not fit the study's model. The HMAC key (`server/checkpoint.key`, mode 0600)
is made when the study starts; it makes a forged manifest detectable by
anyone who cannot read that key.

A strategy's state is its data attributes (numbers, strings, arrays, dicts
and lists of arrays, ArrayRecords, and those of a wrapped strategy);
functions and other objects are configuration, rebuilt from the study.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from study.config import Study
from study.schema import SCHEMA, SchemaError, dumps, loads

# Keys a study may resume with other values of: where and how fast it runs,
# the fault-injection harness, more rounds, and the consortium's grant policy
# (a member removed between sessions gets no key version after its removal).
RUNTIME_KEYS = (
    "out-dir",
    "resume",
    "num-cpus",
    "num-gpus",
    "ray-address",
    "round-timeout",
    "fault-sites",
    "num-rounds",
    "grants",
)
_NAME = re.compile(r"round-(\d+)\.json")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (the message says why)."""


def study_hash(study: Study) -> str:
    cfg = {k: v for k, v in study.to_run_config().items() if k not in RUNTIME_KEYS}
    return hashlib.sha256(dumps(cfg).encode()).hexdigest()


@dataclass
class Checkpoint:
    round: int
    model: dict[str, np.ndarray]
    strategy: dict[str, Any]  # scalar state by attribute path
    strategy_arrays: dict[str, np.ndarray]
    pending_share: dict[int, tuple[str, str]] = field(default_factory=dict)  # site -> digests


# -- strategy state -------------------------------------------------------------------
def strategy_state(strategy: object) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(scalar state, array state) of a strategy and the strategies it wraps."""
    scalars: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}

    def walk(obj: object, prefix: str) -> None:
        for name, value in vars(obj).items():
            path = f"{prefix}{name}"
            if value is None or isinstance(value, bool | int | str):
                scalars[path] = {"kind": "value", "value": value}
            elif isinstance(value, float):
                scalars[path] = {"kind": "float", "value": value.hex()}
            elif isinstance(value, ArrayRecord):
                scalars[path] = {"kind": "arrayrecord", "keys": list(value.keys())}
                for k, a in value.items():
                    arrays[f"strategy/{path}/{k}"] = a.numpy()
            elif (
                isinstance(value, dict)
                and value
                and all(isinstance(v, np.ndarray) for v in value.values())
            ):
                scalars[path] = {"kind": "arraydict", "keys": [str(k) for k in value]}
                for k, a in value.items():
                    arrays[f"strategy/{path}/{k}"] = a
            elif (
                isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value)
            ):
                scalars[path] = {"kind": "arraylist", "length": len(value)}
                for i, a in enumerate(value):
                    arrays[f"strategy/{path}/{i}"] = a
            elif hasattr(value, "configure_train") and hasattr(value, "aggregate_train"):
                walk(value, f"{path}.")  # a wrapped strategy (DP wrappers)

    walk(strategy, "")
    return scalars, arrays


def restore_strategy(strategy: object, scalars: dict[str, Any], arrays: dict[str, np.ndarray]):
    """Set the recorded state on a strategy freshly built from the study."""
    for path, entry in scalars.items():
        *parents, name = path.split(".")
        target = strategy
        for parent in parents:
            target = getattr(target, parent)
        kind = entry.get("kind")
        if kind == "value":
            value: Any = entry["value"]
        elif kind == "float":
            value = float.fromhex(entry["value"])
        elif kind == "arrayrecord":
            value = ArrayRecord({k: Array(arrays[f"strategy/{path}/{k}"]) for k in entry["keys"]})
        elif kind == "arraydict":
            value = {k: arrays[f"strategy/{path}/{k}"] for k in entry["keys"]}
        elif kind == "arraylist":
            value = [arrays[f"strategy/{path}/{i}"] for i in range(int(entry["length"]))]
        else:
            raise CheckpointError(f"strategy state {path!r}: unknown kind {kind!r}")
        setattr(target, name, value)


# -- files ------------------------------------------------------------------------------
class CheckpointStore:
    def __init__(self, out: Path, study: Study) -> None:
        self.dir = out / "checkpoints"
        self.key_path = out / "server" / "checkpoint.key"
        self.study = study

    def _key(self, create: bool) -> bytes:
        if self.key_path.is_file():
            return self.key_path.read_bytes()
        if not create:
            raise CheckpointError(
                f"{self.key_path} is missing: the checkpoints of this run cannot be verified"
            )
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        return self.key_path.read_bytes()

    def clear(self) -> None:
        if self.dir.exists():
            for f in self.dir.glob("round-*"):
                f.unlink()

    def save(
        self,
        rnd: int,
        model: ArrayRecord,
        strategy: object,
        pending_share: dict[int, tuple[str, str]],
    ) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        scalars, arrays = strategy_state(strategy)
        arrays = {**{f"model/{k}": a.numpy() for k, a in model.items()}, **arrays}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        blob = buf.getvalue()
        manifest = {
            "schema": SCHEMA,
            "round": rnd,
            "study_hash": study_hash(self.study),
            "arrays_sha256": hashlib.sha256(blob).hexdigest(),
            "model": list(model.keys()),
            "strategy_class": type(strategy).__name__,
            "strategy": scalars,
            "pending_share": {str(s): list(d) for s, d in sorted(pending_share.items())},
        }
        manifest["hmac"] = self._mac(manifest, create=True)
        npz, js = self.dir / f"round-{rnd}.npz", self.dir / f"round-{rnd}.json"
        _atomic_write(npz, blob)
        _atomic_write(js, (dumps(manifest, indent=2) + "\n").encode())

    def _mac(self, manifest: dict[str, Any], *, create: bool = False) -> str:
        body = dumps({k: v for k, v in manifest.items() if k != "hmac"}).encode()
        return hmac.new(self._key(create), body, hashlib.sha256).hexdigest()

    def rounds(self) -> list[int]:
        if not self.dir.exists():
            return []
        found = (_NAME.fullmatch(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, rnd: int, model_template: dict[str, np.ndarray]) -> Checkpoint:
        """The checkpoint of round `rnd`, verified; CheckpointError says what is wrong."""
        js, npz = self.dir / f"round-{rnd}.json", self.dir / f"round-{rnd}.npz"
        try:
            manifest = loads(js.read_text(), source=str(js))
        except (OSError, SchemaError) as exc:
            raise CheckpointError(f"{js}: unreadable checkpoint manifest: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise CheckpointError(f"{js}: not a schema-{SCHEMA} checkpoint manifest")
        if not hmac.compare_digest(str(manifest.get("hmac", "")), self._mac(manifest)):
            raise CheckpointError(f"{js}: the manifest was changed after it was written (HMAC)")
        if manifest.get("study_hash") != study_hash(self.study):
            raise CheckpointError(
                f"{js}: written for another study configuration; resume with the same "
                f"study settings (only {', '.join(RUNTIME_KEYS)} may differ) or start a "
                "new --out folder"
            )
        try:
            blob = npz.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{npz}: {exc.strerror or exc}") from None
        if hashlib.sha256(blob).hexdigest() != manifest.get("arrays_sha256"):
            raise CheckpointError(f"{npz}: the arrays were changed after they were written")
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (ValueError, OSError, EOFError) as exc:
            raise CheckpointError(f"{npz}: not a readable array file ({exc})") from None
        model = {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
        for name, ref in model_template.items():
            got = model.get(name)
            if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
                raise CheckpointError(
                    f"{npz}: model array {name!r} is missing or does not fit the study's model"
                )
        if set(model) != set(model_template):
            raise CheckpointError(f"{npz}: holds arrays the study's model does not have")
        return Checkpoint(
            round=int(manifest["round"]),
            model={k: model[k] for k in model_template},
            strategy=manifest.get("strategy", {}),
            strategy_arrays={k: v for k, v in arrays.items() if k.startswith("strategy/")},
            pending_share={int(s): (d[0], d[1]) for s, d in manifest["pending_share"].items()},
        )


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
