"""Checkpoints that are data, never code, and trusted only from the operator.

After each round the server writes two files:

    checkpoints/round-N.npz    every array: the global model ("model/<name>")
                               and the strategy's array state
                               ("strategy/<field>/<key>"); plain .npy members
    checkpoints/round-N.json   the round, the study's hash, the strategy's
                               scalar state, the consortium's pending shares
                               (archive digests), the npz's sha256, the id of
                               the key that signed it, and an HMAC-SHA256 over
                               all of it

The signing key lives in the operator's key store (server/keystore.py), never
in the run folder: whoever can write the folder cannot sign a checkpoint. The
manifest names the key only by its id. `--resume` refuses, with a message that
names the file and says why, a checkpoint signed by a key the operator does
not hold (another operator's run, a folder an older medfed wrote with its key
in `server/checkpoint.key`, a forgery), one whose files were changed (sha256
or HMAC mismatch) and one written for another study configuration.
`--trust-checkpoint` accepts a checkpoint the operator does not hold the key
of, on purpose: its content is validated like any other, then it is re-signed
with the operator's key.

Whatever the signature says, everything read back is validated as hostile:
the manifest's fields by type and bound; the strategy state only as fields of
a fixed allow-list (`STATE_FIELDS`: no dotted paths into arbitrary objects),
each with its type and bounds; archive digests as 64 lowercase hex digits;
each npz member's .npy header (dtype, shape) against the study's model
before a byte of its data is decompressed, with the sizes in the zip
directory checked first. Nothing is ever unpickled. Every refusal is a
CheckpointError naming the file and the field or member.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from encryption.private_files import UnsafeFileError, read_regular_file
from server.keystore import KEY_ID, KeyStore, KeyStoreError
from study.config import UPPER_BOUNDS, Study
from study.schema import SCHEMA, SchemaError, dumps, loads

# Keys a study may resume with other values of: where and how fast it runs,
# the fault-injection harness, how long a round waits for a reconnecting site,
# more rounds, the consortium's grant policy (a member removed between sessions
# gets no key version after its removal), and whether a foreign checkpoint is
# accepted (--trust-checkpoint).
RUNTIME_KEYS = (
    "out-dir",
    "resume",
    "trust-checkpoint",
    "num-cpus",
    "num-gpus",
    "ray-address",
    "round-timeout",
    "rejoin-wait",
    "fault-sites",
    "num-rounds",
    "grants",
)
_NAME = re.compile(r"round-(\d+)\.json")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SITE = re.compile(r"0|[1-9][0-9]{0,3}")
MAX_MANIFEST_BYTES = 4 << 20
# .npy members: the dtypes a model or a strategy's state may have, and the largest header
ARRAY_KINDS = "biuf"  # bool, signed and unsigned integers, floats (no objects, strings, records)
MAX_NPY_HEADER = 4096
LEGACY_KEY = Path("server") / "checkpoint.key"  # where medfed kept the key before key stores


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (the message says why)."""


def study_hash(study: Study) -> str:
    cfg = {k: v for k, v in study.to_run_config().items() if k not in RUNTIME_KEYS}
    return hashlib.sha256(dumps(cfg).encode()).hexdigest()


@dataclass
class Checkpoint:
    round: int
    model: dict[str, np.ndarray]
    strategy: dict[str, Any]  # scalar state by field (STATE_FIELDS)
    strategy_arrays: dict[str, np.ndarray]
    pending_share: dict[int, tuple[str, str]] = field(default_factory=dict)  # site -> digests
    # set when --trust-checkpoint accepted a checkpoint this operator had not signed
    warning: str | None = None


# -- strategy state -------------------------------------------------------------------
@dataclass(frozen=True)
class StateField:
    """One field of a strategy's state a checkpoint may carry: the kinds its value
    may have ("float", "int", "bool", "str", "none", "arrayrecord", "arraydict",
    "arraylist") and, for numbers, the closed range it must lie in."""

    kinds: tuple[str, ...]
    low: float = -math.inf
    high: float = math.inf


def _num(kind: str, low: float, high: float) -> StateField:
    return StateField((kind,), low, high)


_NODES = _num("int", 0, UPPER_BOUNDS["num-sites"])
_SHARE = _num("float", 0.0, 1.0)
_RATE = _num("float", 0.0, 1e6)
_KEY = StateField(("str",))
# What the supported strategies (study.config.STRATEGIES, and Flower's DP wrappers
# around them) hold as data: their settings, rebuilt from the study anyway, and the
# state that changes from round to round (FedOpt's current arrays and moments
# m_t/v_t, FedAvgM's momentum, the adaptive clipping norm). Nothing else is read
# from a checkpoint, and nothing is set on any other object.
STATE_FIELDS: dict[str, StateField] = {
    # FedAvg and every strategy built on it
    "fraction_train": _SHARE,
    "fraction_evaluate": _SHARE,
    "min_train_nodes": _NODES,
    "min_evaluate_nodes": _NODES,
    "min_available_nodes": _NODES,
    "weighted_by_key": _KEY,
    "arrayrecord_key": _KEY,
    "configrecord_key": _KEY,
    # FedProx
    "proximal_mu": _RATE,
    # FedOpt: FedAdam, FedYogi, FedAdagrad
    "eta": _RATE,
    "eta_l": _RATE,
    "tau": _RATE,
    "beta_1": _SHARE,
    "beta_2": _SHARE,
    "current_arrays": StateField(("none", "arrayrecord", "arraydict")),
    "m_t": StateField(("none", "arraydict")),
    "v_t": StateField(("none", "arraydict")),
    # FedAvgM
    "server_learning_rate": _RATE,
    "server_momentum": _SHARE,
    "server_opt": StateField(("bool",)),
    "momentum_vector": StateField(("none", "arraylist")),
    # FedTrimmedAvg
    "beta": _num("float", 0.0, 0.5),
    # Krum, MultiKrum, Bulyan
    "num_malicious_nodes": _NODES,
    "num_nodes_to_select": _NODES,
    # QFedAvg
    "q": _RATE,
    "client_learning_rate": _RATE,
    "train_loss_key": _KEY,
    # the DP wrappers (fixed and adaptive clipping)
    "noise_multiplier": _num("float", 0.0, UPPER_BOUNDS["dp-noise-multiplier"]),
    "clipping_norm": _num("float", 0.0, 1e12),
    "num_sampled_clients": _NODES,
    "target_clipped_quantile": _SHARE,
    "clip_norm_lr": _RATE,
    "clipped_count_stddev": _num("float", 0.0, 1e9),
    "accountant": StateField(("none",)),
}
WRAPPED = "strategy"  # the attribute a DP wrapper keeps its strategy in: "strategy.<field>"
_TEXT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ARRAY_KINDS = ("arrayrecord", "arraydict", "arraylist")


def _split(path: object) -> tuple[str, str]:
    """(prefix, field) of a state path: "field" or "strategy.field", nothing else."""
    if not isinstance(path, str):
        raise CheckpointError(f"strategy state {path!r}: not a field name")
    parts = path.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == WRAPPED):
        name = parts[-1]
        if name in STATE_FIELDS:
            return ("" if len(parts) == 1 else WRAPPED), name
    raise CheckpointError(
        f"strategy state {path!r}: not a field medfed restores (allowed: a field of "
        f"STATE_FIELDS, or '{WRAPPED}.<field>' for a wrapped strategy)"
    )


def _entry_kind(entry: dict[str, Any]) -> str:
    """The kind of a stored entry, as STATE_FIELDS names kinds."""
    kind = entry.get("kind")
    if kind == "float":
        return "float"
    if kind in _ARRAY_KINDS:
        return kind
    if kind == "value":
        value = entry.get("value")
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int):
            return "int"
        if isinstance(value, str):
            return "str"
    return f"{kind!r}" if kind != "value" else f"value of type {type(entry.get('value')).__name__}"


def check_state_entry(path: object, entry: object) -> tuple[str, str, Any]:
    """(prefix, field, value or array keys) of one stored strategy entry, checked
    against STATE_FIELDS; CheckpointError (naming the field) when it does not fit."""
    prefix, name = _split(path)
    spec = STATE_FIELDS[name]

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"strategy state {path!r}: {why}")

    if not isinstance(entry, dict) or set(entry) - {"kind", "value", "keys", "length"}:
        raise bad("not a state entry ({'kind': ..., 'value' | 'keys' | 'length': ...})")
    kind = _entry_kind(entry)
    if kind == "int" and "float" in spec.kinds and "int" not in spec.kinds:
        kind = "float"  # a whole number where a float is kept
        value: Any = float(entry["value"])
    elif kind not in spec.kinds:
        raise bad(f"a {kind} is not allowed here (allowed: {', '.join(spec.kinds)})")
    elif kind == "float":
        raw = entry.get("value")
        try:
            value = float.fromhex(raw) if isinstance(raw, str) else None
        except (ValueError, OverflowError):
            value = None
        if value is None:
            raise bad(f"{raw!r} is not a float (hex)")
    elif kind in ("arrayrecord", "arraydict"):
        keys = entry.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise bad("'keys' is not a list of array names")
        if len(set(keys)) != len(keys):
            raise bad("'keys' names an array twice")
        return prefix, name, keys
    elif kind == "arraylist":
        length = entry.get("length")
        if not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= 100_000:
            raise bad(f"'length' {length!r} is not a number of arrays")
        return prefix, name, length
    else:
        value = entry["value"]
    if kind == "float" and not (math.isfinite(value) and spec.low <= value <= spec.high):
        raise bad(f"{value!r} is out of bounds [{spec.low:g}, {spec.high:g}]")
    if kind == "int" and not spec.low <= value <= spec.high:
        raise bad(f"{value!r} is out of bounds [{spec.low:g}, {spec.high:g}]")
    if kind == "str" and not _TEXT.fullmatch(value):
        raise bad(f"{value[:80]!r} is not a record key (letters, digits, '_', '.', '-')")
    return prefix, name, value


def strategy_state(strategy: object) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(scalar state, array state) of a strategy and the strategy a DP wrapper
    holds: the fields of STATE_FIELDS it has; functions, other objects and other
    attributes are configuration, rebuilt from the study."""
    scalars: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}

    def walk(obj: object, prefix: str) -> None:
        for name, value in vars(obj).items():
            path = f"{prefix}{name}"
            if not prefix and name == WRAPPED and hasattr(value, "aggregate_train"):
                walk(value, f"{WRAPPED}.")  # a wrapped strategy (DP wrappers)
                continue
            if name not in STATE_FIELDS:
                continue
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

    walk(strategy, "")
    return scalars, arrays


def restore_strategy(strategy: object, scalars: dict[str, Any], arrays: dict[str, np.ndarray]):
    """Set the recorded state on a strategy freshly built from the study: only
    fields of STATE_FIELDS (checked again here), only on the strategy or the
    strategy its DP wrapper holds, and only fields that strategy has. Nothing is
    set unless every entry fits."""
    if not isinstance(scalars, dict):
        raise CheckpointError("strategy state: not a mapping of fields")
    updates: list[tuple[object, str, Any]] = []
    for path, entry in scalars.items():
        prefix, name, checked = check_state_entry(path, entry)
        target = strategy
        if prefix:
            target = vars(strategy).get(WRAPPED)
            if target is None or not hasattr(target, "aggregate_train"):
                raise CheckpointError(f"strategy state {path!r}: the strategy wraps none")
        if name not in vars(target):
            raise CheckpointError(
                f"strategy state {path!r}: {type(target).__name__} has no such field"
            )
        kind = entry["kind"]

        def array(key: str, path: str = path) -> np.ndarray:
            got = arrays.get(f"strategy/{path}/{key}")
            if got is None:
                raise CheckpointError(f"strategy state {path!r}: array {key!r} is missing")
            return got

        if kind == "arrayrecord":
            value: Any = ArrayRecord({k: Array(array(k)) for k in checked})
        elif kind == "arraydict":
            value = {k: array(k) for k in checked}
        elif kind == "arraylist":
            value = [array(str(i)) for i in range(checked)]
        else:
            value = checked
        updates.append((target, name, value))
    for target, name, value in updates:
        setattr(target, name, value)


# -- files ------------------------------------------------------------------------------
class CheckpointStore:
    def __init__(self, out: Path, study: Study) -> None:
        self.out = Path(out)
        self.dir = self.out / "checkpoints"
        self.study = study

    @property
    def keys(self) -> KeyStore:
        """The operator's key store, as the environment names it now."""
        return KeyStore()

    @property
    def key_path(self) -> Path:
        """The operator's signing key (outside the run folder)."""
        return self.keys.signing_path

    def _signing_key(self, *, create: bool) -> tuple[str, bytes]:
        keys = self.keys
        try:
            keys.check_outside(self.out)
            return keys.signing_key(create=create)
        except KeyStoreError as exc:
            raise CheckpointError(str(exc)) from None

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
        kid, _ = self._signing_key(create=True)
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
            "key_id": kid,
        }
        manifest["hmac"] = self._mac(manifest)
        npz, js = self.dir / f"round-{rnd}.npz", self.dir / f"round-{rnd}.json"
        _atomic_write(npz, blob)
        _atomic_write(js, (dumps(manifest, indent=2) + "\n").encode())

    def _mac(self, manifest: dict[str, Any], *, create: bool = False) -> str:
        """HMAC of a manifest (all but "hmac") with the operator's signing key."""
        return _hmac(self._signing_key(create=create)[1], manifest)

    def rounds(self) -> list[int]:
        if not self.dir.exists():
            return []
        found = (_NAME.fullmatch(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(
        self,
        rnd: int,
        model_template: dict[str, np.ndarray],
        *,
        trust: bool = False,
        resign: bool = True,
    ) -> Checkpoint:
        """The checkpoint of round `rnd`, verified; CheckpointError says what is wrong.

        `trust` (--trust-checkpoint) accepts a checkpoint whose signature this
        operator cannot verify (another key, an older medfed's key in the run
        folder, a changed manifest); its content is validated all the same, then,
        with `resign`, the manifest is signed with the operator's key, and the
        returned checkpoint's `warning` says so."""
        js, npz = self.dir / f"round-{rnd}.json", self.dir / f"round-{rnd}.npz"
        try:
            text = _read_file(js, MAX_MANIFEST_BYTES).decode()
            manifest = loads(text, source=str(js))
        except (SchemaError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{js}: unreadable checkpoint manifest: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise CheckpointError(f"{js}: not a schema-{SCHEMA} checkpoint manifest")
        untrusted = self._untrusted(manifest, js)  # the signature first: says what changed
        if untrusted and not trust:
            raise CheckpointError(
                f"{untrusted}. If you know where this run folder has been and accept its "
                "content, resume with --trust-checkpoint: the checkpoint is validated, then "
                "re-signed with your key"
            )
        fields = check_manifest(manifest, js, rnd, self.study, model_template)
        if manifest["study_hash"] != study_hash(self.study):
            raise CheckpointError(
                f"{js}: written for another study configuration; resume with the same "
                f"study settings (only {', '.join(RUNTIME_KEYS)} may differ) or start a "
                "new --out folder"
            )
        cap = _npz_cap(model_template, fields["members"])
        blob = _read_file(npz, cap, what="array file")
        if hashlib.sha256(blob).hexdigest() != manifest["arrays_sha256"]:
            raise CheckpointError(f"{npz}: the arrays were changed after they were written")
        arrays = read_npz(blob, npz, fields["members"])
        warning = None
        if untrusted:
            warning = (
                f"{js}: accepted with --trust-checkpoint ({untrusted.split(': ', 1)[-1]}); "
                "its content was validated"
            )
            if resign:
                kid, _ = self._signing_key(create=True)
                signed = {**manifest, "key_id": kid}
                signed["hmac"] = self._mac(signed)
                _atomic_write(js, (dumps(signed, indent=2) + "\n").encode())
                warning += f" and it is now signed with your key {kid} ({self.keys.home})"
        return Checkpoint(
            round=rnd,
            model={k: arrays[f"model/{k}"] for k in model_template},
            strategy=manifest["strategy"],
            strategy_arrays={k: v for k, v in arrays.items() if k.startswith("strategy/")},
            pending_share=fields["pending_share"],
            warning=warning,
        )

    def _untrusted(self, manifest: dict[str, Any], js: Path) -> str | None:
        """Why the manifest's signature does not verify with a key this operator
        holds, or None when it does."""
        kid, mac = manifest.get("key_id"), manifest.get("hmac")
        if kid is not None and not (isinstance(kid, str) and KEY_ID.fullmatch(kid)):
            raise CheckpointError(f"{js}: field 'key_id': not a key id (32 lowercase hex digits)")
        if not isinstance(mac, str) or not _DIGEST.fullmatch(mac):
            raise CheckpointError(f"{js}: field 'hmac': not 64 lowercase hex digits")
        if kid is None:
            legacy = self.out / LEGACY_KEY
            return (
                f"{js}: signed with the key an older medfed kept in the run folder "
                f"({legacy}); anyone who can write that folder can replace the key and sign "
                "what they like, so such a checkpoint is not trusted"
            )
        keys = self.keys
        try:
            keys.check_outside(self.out)
            key = keys.key(kid)
        except KeyStoreError as exc:
            raise CheckpointError(str(exc)) from None
        if key is None:
            return (
                f"{js}: signed by key {kid}, which is not in your key store ({keys.home}): "
                "another operator's run, a copied folder, or a forgery"
            )
        if not hmac.compare_digest(mac, _hmac(key, manifest)):
            return f"{js}: the manifest was changed after it was written (HMAC with key {kid})"
        return None


def _hmac(key: bytes, manifest: dict[str, Any]) -> str:
    body = dumps({k: v for k, v in manifest.items() if k != "hmac"}).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _read_file(path: Path, cap: int, what: str = "checkpoint manifest") -> bytes:
    """A regular file's bytes (no link), refused (CheckpointError) when larger than
    `cap`, the most a checkpoint of this study can hold."""
    try:
        return read_regular_file(path, cap)
    except UnsafeFileError as exc:
        raise CheckpointError(f"{path}: {exc}; not read") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable {what}: {exc.strerror or exc}") from None


# -- the manifest, field by field ---------------------------------------------------------
MANIFEST_FIELDS = (
    "schema",
    "round",
    "study_hash",
    "arrays_sha256",
    "model",
    "strategy_class",
    "strategy",
    "pending_share",
    "key_id",
    "hmac",
)


@dataclass(frozen=True)
class Member:
    """An npz member a checkpoint must hold: its shape, and the dtypes it may have."""

    shape: tuple[int, ...]
    dtypes: tuple[np.dtype, ...] | None  # None: any dtype of ARRAY_KINDS


def check_manifest(
    doc: object, js: Path, rnd: int, study: Study, template: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Every field of a manifest checked by type and bound (whatever its signature
    says); returns the npz members it implies and the pending shares."""

    def bad(name: str, why: str) -> CheckpointError:
        return CheckpointError(f"{js}: field {name!r}: {why}")

    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise CheckpointError(f"{js}: not a schema-{SCHEMA} checkpoint manifest")
    unknown = sorted(set(doc) - set(MANIFEST_FIELDS))
    if unknown:
        raise bad(unknown[0], "not a field of a checkpoint manifest")
    missing = [k for k in MANIFEST_FIELDS if k not in doc and k != "key_id"]
    if missing:
        raise bad(missing[0], "missing")
    if type(doc["round"]) is not int or doc["round"] != rnd:
        raise bad("round", f"{doc['round']!r} is not this file's round ({rnd})")
    for name in ("study_hash", "arrays_sha256", "hmac"):
        if not isinstance(doc[name], str) or not _DIGEST.fullmatch(doc[name]):
            raise bad(name, "not 64 lowercase hex digits")
    kid = doc.get("key_id")
    if kid is not None and not (isinstance(kid, str) and KEY_ID.fullmatch(kid)):
        raise bad("key_id", "not a key id (32 lowercase hex digits)")
    cls = doc["strategy_class"]
    if not isinstance(cls, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", cls):
        raise bad("strategy_class", "not a class name")
    model = doc["model"]
    if (
        not isinstance(model, list)
        or not all(isinstance(k, str) for k in model)
        or len(model) != len(template)
        or set(model) != set(template)
    ):
        raise bad("model", "does not name the arrays of the study's model")
    # the global model as the strategy left it: FedOpt's (FedAdam, FedYogi, FedAdagrad)
    # arithmetic makes float64 of a float32 model, which the next round sends on
    members = {f"model/{k}": Member(a.shape, _model_dtypes(a.dtype)) for k, a in template.items()}
    # strategy state: fields of STATE_FIELDS; arrays shaped like the model's
    state = doc["strategy"]
    if not isinstance(state, dict):
        raise bad("strategy", "not a mapping of strategy fields")
    shapes = [a.shape for a in template.values()]
    for path, entry in state.items():
        try:
            _, _, checked = check_state_entry(path, entry)
        except CheckpointError as exc:
            raise CheckpointError(f"{js}: field 'strategy': {exc}") from None
        kind = entry["kind"]
        if kind in ("arrayrecord", "arraydict"):
            for k in checked:
                if k not in template:
                    raise bad("strategy", f"{path!r}: array {k!r} is not one of the model's")
                members[f"strategy/{path}/{k}"] = Member(template[k].shape, None)
        elif kind == "arraylist":
            if checked != len(shapes):
                raise bad("strategy", f"{path!r}: {checked} arrays, the model has {len(shapes)}")
            for i, shape in enumerate(shapes):
                members[f"strategy/{path}/{i}"] = Member(shape, None)
    # pending shares: site -> two archive digests, used as object names in the archive
    pending = doc["pending_share"]
    if not isinstance(pending, dict):
        raise bad("pending_share", "not a mapping of sites to digests")
    shares: dict[int, tuple[str, str]] = {}
    for site, digests in pending.items():
        if not _SITE.fullmatch(site) or int(site) >= study.num_sites:
            raise bad("pending_share", f"{site!r} is not a site of this study")
        if (
            not isinstance(digests, list)
            or len(digests) != 2
            or not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in digests)
        ):
            raise bad(
                "pending_share",
                f"site {site}: {str(digests)[:80]!r} is not two sha256 digests "
                "(64 lowercase hex digits each)",
            )
        shares[int(site)] = (digests[0], digests[1])
    return {"members": members, "pending_share": shares}


# -- the arrays, member by member -------------------------------------------------------
_FLOATS = tuple(np.dtype(t) for t in ("<f2", "<f4", "<f8"))


def _model_dtypes(dtype: np.dtype) -> tuple[np.dtype, ...]:
    return _FLOATS if dtype.kind == "f" else (dtype,)


def _nbytes(member: Member) -> int:
    itemsize = max(d.itemsize for d in member.dtypes) if member.dtypes else 8
    return math.prod(member.shape) * itemsize


def _npz_cap(template: dict[str, np.ndarray], members: dict[str, Member]) -> int:
    """The largest npz a checkpoint with these members can be (stored, with headers)."""
    per_member = MAX_NPY_HEADER + 2 * 1024  # the .npy header, zip headers and names
    return sum(_nbytes(m) + per_member for m in members.values()) + 64 * 1024


def read_npz(blob: bytes, npz: Path, members: dict[str, Member]) -> dict[str, np.ndarray]:
    """The members of an npz, each checked against `members` (name, dtype, shape)
    from the zip directory and the .npy header before its data is decompressed,
    then read incrementally; nothing else in the file is read."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"{npz}: not a readable array file ({exc})") from None
    found: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if name in found:
            raise CheckpointError(f"{npz}: not a readable array file ({name!r} appears twice)")
        found[name] = info
    for name in found:
        if name not in members:
            raise CheckpointError(
                f"{npz}: not a readable array file (member {name!r} is not an array of "
                "this checkpoint)"
            )
    out: dict[str, np.ndarray] = {}
    for name, member in members.items():
        info = found.get(name)
        if info is None:
            what = "model array" if name.startswith("model/") else "strategy array"
            raise CheckpointError(
                f"{npz}: {what} {name!r} is missing or does not fit the study's model"
            )
        out[name] = _read_member(zf, info, npz, name, member)
    return out


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, npz: Path, name: str, member: Member
) -> np.ndarray:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{npz}: not a readable array file (member {name!r}: {why})")

    limit = MAX_NPY_HEADER + _nbytes(member)
    if info.file_size > limit:
        raise bad(
            f"the zip directory says {info.file_size} bytes uncompressed, more than its "
            f"array can be ({limit}); not decompressed"
        )
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise bad(f"compression method {info.compress_type} is not one numpy writes")
    if info.flag_bits & 0x1:
        raise bad("encrypted zip members are not read")
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, MAX_NPY_HEADER)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, MAX_NPY_HEADER)
            else:
                raise bad(f".npy format version {version} is not read")
            if dtype.hasobject or dtype.kind not in ARRAY_KINDS or dtype.fields or dtype.shape:
                raise bad(f"dtype {dtype.str!r} is not allowed (numbers and booleans only)")
            if member.dtypes is not None and dtype not in member.dtypes:
                raise bad(
                    f"dtype {dtype.str!r} does not fit the study's model "
                    f"({', '.join(d.str for d in member.dtypes)})"
                )
            if tuple(shape) != member.shape:
                raise bad(
                    f"shape {tuple(shape)} does not fit the study's model (expects "
                    f"{member.shape}); not read"
                )
            arr = np.empty(member.shape, dtype, order="F" if fortran else "C")
            view = memoryview(arr.reshape(-1, order="A").view(np.uint8))
            done = 0
            while done < len(view):
                n = fh.readinto(view[done:])
                if not n:
                    raise bad(f"ends after {done} of {len(view)} bytes of data")
                done += n
            if fh.read(1):
                raise bad("holds more data than its header says")
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        ValueError,
        OSError,
        EOFError,
        zlib.error,
        NotImplementedError,
        RuntimeError,
        SyntaxError,
    ) as exc:
        raise bad(f"not a .npy array: {exc}") from None
    return arr


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
