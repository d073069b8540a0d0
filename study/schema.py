"""The results schema: one typed definition of every file a study writes, and
the one writer and reader of each.

A study's run folder holds
    config.json     RunConfig     the study and the versions it ran with
    rounds.jsonl    RoundRecord   one line per completed round
    phases.jsonl    PhaseRecord   the server's seconds per phase of each round
    summary.json    Summary       totals, per-site bytes, the final metrics
    events.jsonl    progress events (see server.progress)
A sweep writes comparison.json (ComparisonDocument) and an update-leakage
attack leakage.json (LeakageDocument); benchmarks write their own documents
(benchmarks/document.py).

All JSON medfed writes is strict RFC 8259 (`dumps` refuses NaN and
infinity): a number that is undefined (a mean over nothing) is written as
null, and the PSNR of an exact reconstruction, which is infinite, is written
as null with `"exact": true` in the same object. `loads` restores those
PSNRs to infinity, so code that reads results sees the numbers as computed.

The version of a run folder's files is config.json's `schema`; readers refuse
a folder written by another version with a message that says which.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA = 2  # 2: strict JSON (exact PSNR as null + "exact"), typed records

# What rounds.jsonl counts per site and round, in bytes.
BYTE_KINDS = (
    "ciphertext_up",
    "ciphertext_down",
    "model_up",
    "model_down",
    "message_up",
    "message_down",
    "grant_up",  # sealed grants a site sends (key versions to its grantees)
    "grant_down",  # grants and certificates a site receives
)
# The per-round totals line of rounds.jsonl.
TOTAL_KINDS = (
    "ciphertext_up",
    "ciphertext_down",
    "model_up",
    "model_down",
    "grant_up",
    "grant_down",
)
RECON_KEYS = ("mse", "psnr", "ssim")
SECONDS_KEYS = ("encrypt", "train", "decrypt")


class SchemaError(ValueError):
    """A results file that is not what this version of medfed writes."""


# -- strict JSON ------------------------------------------------------------------
def to_strict(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None; a dict whose PSNR
    entry (a key containing 'psnr') is +inf also gets `"exact": true`."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        exact = False
        for key, value in obj.items():
            if isinstance(value, float) and math.isinf(value) and value > 0 and "psnr" in key:
                exact = True
            out[str(key)] = to_strict(value)
        if exact:
            out["exact"] = True
        return out
    if isinstance(obj, list | tuple):
        return [to_strict(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return to_strict(obj.item())  # numpy scalars
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return to_strict(obj.tolist())  # numpy arrays
    return obj


def from_strict(obj: Any) -> Any:
    """Inverse of `to_strict` for exact PSNRs: null PSNRs of an object marked
    `"exact": true` become +inf again (the marker is kept)."""
    if isinstance(obj, dict):
        exact = obj.get("exact") is True
        return {
            k: (math.inf if exact and v is None and "psnr" in k else from_strict(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [from_strict(v) for v in obj]
    return obj


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of `obj` (never NaN or Infinity)."""
    return json.dumps(to_strict(obj), indent=indent, allow_nan=False)


def loads(text: str, *, source: str = "JSON") -> Any:
    try:
        return from_strict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{source}: not valid JSON: {exc}") from None


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write strict JSON atomically (a temp file, then rename): a reader never
    sees half a file, and the old file stays until the new one is complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(dumps(obj, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return loads(path.read_text(), source=str(path))


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one strict JSON line and flush it to disk."""
    with open(path, "a") as fh:
        fh.write(dumps(obj) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, document) of each complete line; a damaged line is a
    SchemaError naming the file and line. A last line without its newline
    is a write that was cut short (a killed process, a full disk): medfed
    writes each line with its newline in one call, so it is left out."""
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.endswith("\n"):
                return
            if line.strip():
                yield number, loads(line, source=f"{path}, line {number}")


# -- rounds.jsonl -------------------------------------------------------------------
def _zero_bytes() -> dict[str, int]:
    return dict.fromkeys(BYTE_KINDS, 0)


def _nan_recon() -> dict[str, float]:
    return dict.fromkeys(RECON_KEYS, math.nan)


def _zero_seconds() -> dict[str, float]:
    return dict.fromkeys(SECONDS_KEYS, 0.0)


@dataclass
class SiteRecord:
    """One site in one round. A site is not ok until its reply was accounted:
    one whose reply never came stays failed, with the reason in `error`. A
    site that `fraction-train` did not sample this round has `sampled` false
    and is ok (nothing was asked of it but evaluation): not a failure."""

    site: str
    ok: bool = False
    sampled: bool = True
    error: str | None = None
    bytes: dict[str, int] = field(default_factory=_zero_bytes)
    recon: dict[str, float] = field(default_factory=_nan_recon)
    examples: int = 0
    seconds: dict[str, float] = field(default_factory=_zero_seconds)
    # consortium: peer site -> {"images": decrypted this round under a grant, and
    # the reconstruction the grantor measured on them: "mse", "psnr", "ssim"}
    peers: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = {
            "site": self.site,
            "ok": self.ok,
            "sampled": self.sampled,
            "error": self.error,
            "bytes": dict(self.bytes),
            "recon": dict(self.recon),
            "examples": self.examples,
            "seconds": dict(self.seconds),
        }
        if self.peers:
            doc["peers"] = {k: dict(v) for k, v in self.peers.items()}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SiteRecord:
        recon = {k: (math.nan if v is None else v) for k, v in doc["recon"].items()}
        return cls(
            site=doc["site"],
            ok=bool(doc["ok"]),
            sampled=bool(doc.get("sampled", True)),  # before sampling was recorded: all were
            error=doc.get("error"),
            bytes={k: int(v) for k, v in doc["bytes"].items()},
            recon=recon,
            examples=int(doc["examples"]),
            seconds=dict(doc["seconds"]),
            peers={
                peer: {k: (math.nan if v is None else v) for k, v in values.items()}
                for peer, values in (doc.get("peers") or {}).items()
            },
        )


def _finite_or_inf(value: Any) -> float:
    """A JSON epsilon: null is "no guarantee" (infinite)."""
    return math.inf if value is None else value


@dataclass(frozen=True)
class AggregationRecord:
    """Under a central `dp` mode, what the server's aggregation of one round
    had: how it weighted the sites ("uniform" or "examples") and the noise
    multiplier that gave (study.privacy.effective_noise_multiplier). The
    strategy records it; server.results.privacy_spent turns it into the
    round's PrivacyRecord."""

    aggregation_weights: str
    effective_noise_multiplier: float

    def to_json(self) -> dict[str, Any]:
        return {
            "aggregation_weights": self.aggregation_weights,
            "effective_noise_multiplier": self.effective_noise_multiplier,
        }


@dataclass(frozen=True)
class PrivacyRecord:
    """The `privacy` entry of a round (rounds.jsonl) and of summary.json: the
    (epsilon, delta) spent after `rounds_done` rounds and what was accounted
    (study.privacy.PrivacySpent, with the round's aggregation)."""

    dp: str
    rounds_done: int
    epsilon: float  # math.inf: no guarantee (written as null)
    delta: float
    level: str  # "site" | "sample"
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    protects_against: str
    aggregation_weights: str | None = None  # "uniform" | "examples"
    effective_noise_multiplier: float | None = None
    # local-dpsgd: every site's own epsilon (the record's is the worst site's)
    sites: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sites"}
        if not math.isfinite(self.epsilon):
            doc["epsilon"] = None
        if self.sites is not None:
            doc["sites"] = dict(self.sites)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PrivacyRecord:
        if not isinstance(doc, Mapping):
            raise ValueError("privacy: not a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise ValueError(f"privacy: unknown field(s) {', '.join(unknown)}")
        required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in doc]
        if missing:
            raise ValueError(f"privacy: missing field(s) {', '.join(missing)}")
        values = dict(doc)
        values["epsilon"] = _finite_or_inf(values.get("epsilon"))
        if values.get("sites") is not None:
            values["sites"] = {k: _finite_or_inf(v) for k, v in values["sites"].items()}
        return cls(**values)


def privacy_from_json(doc: Mapping[str, Any]) -> PrivacyRecord | AggregationRecord:
    """A round's `privacy` entry: the accounted record, or (before the
    accountant has seen the round) the aggregation alone."""
    if not isinstance(doc, Mapping):
        raise ValueError("privacy: not a JSON object")
    if set(doc) == {"aggregation_weights", "effective_noise_multiplier"}:
        return AggregationRecord(**doc)
    return PrivacyRecord.from_json(doc)


@dataclass(frozen=True)
class SecureAggregationRecord:
    """The `secure_aggregation` entry of a SecAgg+ round (server.secagg): the
    protocol's settings, whose vectors are in the sum, and per stage its
    seconds and each site's bytes."""

    protocol: str  # "secagg+"
    sites_sampled: int
    neighbours: int
    threshold: int
    max_weight: float
    clipping_range: float
    quantization_range: int
    modulus_range: int
    summed: list[str]  # sites whose masked vectors are in the sum
    stages: dict[str, dict[str, Any]]  # stage -> {"seconds", and bytes per site}

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SecureAggregationRecord:
        if not isinstance(doc, Mapping):
            raise ValueError("secure_aggregation: not a JSON object")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in doc]
        unknown = sorted(set(doc) - set(names))
        if missing or unknown:
            raise ValueError(
                f"secure_aggregation: missing {', '.join(missing) or 'nothing'}, "
                f"unknown {', '.join(unknown) or 'nothing'}"
            )
        return cls(**{n: doc[n] for n in names})


class Extensions(MutableMapping):
    """The keys a record carries beyond its fixed ones, in the order they were
    set (which is the order they are written in). Typed keys (a round's
    `privacy` and `secure_aggregation`) hold their dataclass; reading one
    through the mapping gives its JSON form, and setting one from a mapping
    parses it (ValueError names the field). New code reads and sets the
    typed attributes (`RoundRecord.privacy`); the mapping view keeps older
    readers (`record.extra["privacy"]["epsilon"]`) working."""

    def __init__(self, typed: Mapping[str, Any], items: Mapping[str, Any] | None = None) -> None:
        self._typed = dict(typed)  # key -> parser of its JSON form
        self._items: dict[str, Any] = {}
        self.update(items or {})

    def typed(self, key: str) -> Any:
        """The typed value of `key` (None when absent)."""
        return self._items.get(key)

    def set_typed(self, key: str, value: Any) -> None:
        if value is None:
            self._items.pop(key, None)
        else:
            self[key] = value

    def __getitem__(self, key: str) -> Any:
        value = self._items[key]
        return value.to_json() if key in self._typed else value

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._typed and not hasattr(value, "to_json"):  # its JSON form: parsed
            value = self._typed[key](value)
        self._items[key] = value

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Extensions({self._items!r})"


def _round_extensions(items: Mapping[str, Any] | None = None) -> Extensions:
    return Extensions(
        {"privacy": privacy_from_json, "secure_aggregation": SecureAggregationRecord.from_json},
        items,
    )


def _summary_extensions(items: Mapping[str, Any] | None = None) -> Extensions:
    return Extensions({"privacy": PrivacyRecord.from_json}, items)


@dataclass
class RoundRecord:
    """One line of rounds.jsonl: per-site accounting, totals, global metrics.

    Beside the five fixed fields a round may carry, in the order they were
    set, `privacy` (a PrivacyRecord, or the AggregationRecord before the
    accountant saw the round), `secure_aggregation` (a
    SecureAggregationRecord) and `warnings` (a list of text); `extra` holds
    them all (module Extensions)."""

    round: int
    sites: list[SiteRecord]
    totals: dict[str, int]
    global_: dict[str, Any]  # "global" in JSON
    seconds: float
    extra: Extensions = field(default_factory=_round_extensions)

    def __post_init__(self) -> None:
        if not isinstance(self.extra, Extensions):
            self.extra = _round_extensions(self.extra)

    @property
    def privacy(self) -> PrivacyRecord | AggregationRecord | None:
        return self.extra.typed("privacy")

    @privacy.setter
    def privacy(self, value: PrivacyRecord | AggregationRecord | None) -> None:
        self.extra.set_typed("privacy", value)

    @property
    def secure_aggregation(self) -> SecureAggregationRecord | None:
        return self.extra.typed("secure_aggregation")

    @secure_aggregation.setter
    def secure_aggregation(self, value: SecureAggregationRecord | None) -> None:
        self.extra.set_typed("secure_aggregation", value)

    @classmethod
    def build(
        cls, rnd: int, sites: Iterable[SiteRecord], global_: Mapping[str, Any], seconds: float
    ) -> RoundRecord:
        ordered = sorted(sites, key=lambda s: site_order(s.site))
        totals = {k: sum(s.bytes[k] for s in ordered) for k in TOTAL_KINDS}
        return cls(rnd, ordered, totals, dict(global_), seconds)

    @property
    def ok_sites(self) -> list[SiteRecord]:
        return [s for s in self.sites if s.ok]

    @property
    def sampled_sites(self) -> list[SiteRecord]:
        """The sites asked to train this round (fraction-train)."""
        return [s for s in self.sites if s.sampled]

    @property
    def trained_sites(self) -> list[SiteRecord]:
        """The sampled sites whose training reply was accounted."""
        return [s for s in self.sites if s.sampled and s.ok]

    @property
    def failed_sites(self) -> list[SiteRecord]:
        return [s for s in self.sites if not s.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "sites": [s.to_json() for s in self.sites],
            "totals": dict(self.totals),
            "global": dict(self.global_),
            "seconds": self.seconds,
            **{k: self.extra[k] for k in self.extra},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RoundRecord:
        known = {"round", "sites", "totals", "global", "seconds"}
        return cls(
            round=int(doc["round"]),
            sites=[SiteRecord.from_json(s) for s in doc["sites"]],
            totals={k: int(v) for k, v in doc["totals"].items()},
            global_={k: (math.nan if v is None else v) for k, v in doc["global"].items()},
            seconds=float(doc["seconds"]),
            extra={k: v for k, v in doc.items() if k not in known},
        )


def site_order(name: str) -> tuple[int, str]:
    """site-2 before site-10; names that are not site-N last."""
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() and name.startswith("site-") else (10**9, name)


# -- phases.jsonl ----------------------------------------------------------------------
# The server's phases of a round, in the order phases.jsonl writes them.
PHASES = ("train_round", "aggregate", "evaluate_round", "holdout")
_MAX_ROUND = 100_000  # num-rounds' upper bound (study.config.UPPER_BOUNDS)
_MAX_PHASE_NAME = 256


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e12


@dataclass
class PhaseRecord:
    """One line of phases.jsonl: the server's seconds in each phase of a round
    (`train_round` and `evaluate_round`: from sending the round's messages to
    the last reply; `aggregate`: the strategy's aggregation; `holdout`: the
    held-out evaluation). `seconds` keeps the phases in the order written;
    a phase other than PHASES (a later medfed's) is kept, not refused, and a
    phase the line lacks reads as None."""

    round: int
    seconds: dict[str, float]

    @property
    def train_round(self) -> float | None:
        return self.seconds.get("train_round")

    @property
    def aggregate(self) -> float | None:
        return self.seconds.get("aggregate")

    @property
    def evaluate_round(self) -> float | None:
        return self.seconds.get("evaluate_round")

    @property
    def holdout(self) -> float | None:
        return self.seconds.get("holdout")

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, **self.seconds}

    @classmethod
    def from_json(cls, doc: Any, *, where: str = "phases record") -> PhaseRecord:
        """SchemaError names the place and the field."""
        if not isinstance(doc, Mapping):
            raise SchemaError(f"{where}: not a phases record (a JSON object)")
        rnd = doc.get("round")
        if type(rnd) is not int or not 1 <= rnd <= _MAX_ROUND:
            raise SchemaError(f"{where}: field 'round': {rnd!r} is not a round number")
        for key, value in doc.items():
            if key != "round" and (len(key) > _MAX_PHASE_NAME or not _is_seconds(value)):
                raise SchemaError(f"{where}: field {key[:80]!r}: {value!r} is not seconds")
        return cls(rnd, {k: v for k, v in doc.items() if k != "round"})


def iter_phases(path: str | os.PathLike) -> Iterator[PhaseRecord]:
    """The records of one phases.jsonl, each checked (no version check: `read_phases`)."""
    for number, doc in iter_jsonl(path):
        yield PhaseRecord.from_json(doc, where=f"{path}, line {number}")


def read_phases(path: str | os.PathLike) -> dict[int, PhaseRecord]:
    """phases.jsonl of a run folder (`path`: the folder or the file) by round,
    after checking the folder's results schema (config.json, `read_config`);
    {} when the folder has no phases.jsonl. SchemaError names the file, line
    and field of a line that is not a phases record."""
    path = Path(path)
    folder, file = (path, path / "phases.jsonl") if path.is_dir() else (path.parent, path)
    read_config(folder)
    if not file.exists():
        return {}
    return {record.round: record for record in iter_phases(file)}


# -- the run folder ------------------------------------------------------------------
RUN_FILES = ("config.json", "rounds.jsonl", "phases.jsonl", "summary.json", "events.jsonl")


@dataclass
class Summary:
    """summary.json: what a study cost and reached."""

    status: str  # complete | incomplete | stopped
    study: str
    method: str
    exchange: str
    modality: str
    sites: int
    rounds: int
    bytes: dict[str, int]
    bytes_per_round: dict[str, float]
    bytes_per_site: dict[str, dict[str, int]]
    upload_seconds_per_round: dict[str, float]
    final: dict[str, Any]
    seconds: float
    schema: int = SCHEMA
    stopped_round: int | None = None
    reason: str | None = None
    failed_sites: list[dict[str, Any]] | None = None
    # keys beyond these: `privacy` (the last round's PrivacyRecord) under dp
    extra: Extensions = field(default_factory=_summary_extensions)

    def __post_init__(self) -> None:
        if not isinstance(self.extra, Extensions):
            self.extra = _summary_extensions(self.extra)

    @property
    def privacy(self) -> PrivacyRecord | None:
        return self.extra.typed("privacy")

    @privacy.setter
    def privacy(self, value: PrivacyRecord | None) -> None:
        self.extra.set_typed("privacy", value)

    def to_json(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        doc = {"schema": doc.pop("schema"), **doc}
        for key in ("stopped_round", "reason", "failed_sites"):
            if doc[key] is None:
                del doc[key]
        return {**doc, **{k: self.extra[k] for k in self.extra}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Summary:
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in doc.items() if k in names}
        return cls(**known, extra={k: v for k, v in doc.items() if k not in names})


@dataclass
class RunResults:
    """Everything in a run folder, read once through the typed records."""

    folder: Path
    config: dict[str, Any]
    rounds: list[RoundRecord]
    summary: Summary | None

    @property
    def study(self) -> dict[str, Any]:
        return self.config.get("study", {})


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    doc = read_json(path)
    if doc.get("schema") != SCHEMA:
        raise SchemaError(
            f"{path}: written by a medfed with results schema {doc.get('schema')!r}; this "
            f"medfed reads schema {SCHEMA}: re-run the study (or read it with that version)"
        )
    return doc


def read_rounds(folder: str | os.PathLike) -> list[RoundRecord]:
    path = Path(folder) / "rounds.jsonl"
    if not path.exists():
        return []
    out = []
    for number, doc in iter_jsonl(path):
        try:
            out.append(RoundRecord.from_json(doc))
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"{path}, line {number}: not a round record ({exc})") from None
    return out


def read_summary(folder: str | os.PathLike) -> Summary | None:
    path = Path(folder) / "summary.json"
    if not path.exists():
        return None
    doc = read_json(path)
    try:
        return Summary.from_json(doc)
    except TypeError as exc:
        raise SchemaError(f"{path}: not a summary ({exc})") from None


def read_run(folder: str | os.PathLike) -> RunResults:
    """The one reader of a study's run folder (CLI tables, report, benchmarks, tests)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder")
    return RunResults(folder, read_config(folder), read_rounds(folder), read_summary(folder))


# -- a sweep's comparison.json and an attack's leakage.json -----------------------------
COMPARISON_SCHEMA = 1
LEAKAGE_SCHEMA = 1


def _check_version(doc: Any, wanted: int, what: str, source: str) -> None:
    if not isinstance(doc, dict):
        raise SchemaError(f"{source}: not {what} (a JSON object)")
    if "benchmark" in doc:
        raise SchemaError(f"{source}: a benchmark document ({doc['benchmark']!r}), not {what}")
    if doc.get("schema") != wanted:
        raise SchemaError(
            f"{source}: {what} of schema {doc.get('schema')!r}; this medfed reads schema "
            f"{wanted}: write it again (or read it with that version)"
        )


@dataclass
class ComparisonDocument:
    """comparison.json of `medfed sweep`: the sweep's grid and explicit points,
    and one row per study (its settings, bytes, task metric, epsilon and the
    privacy probe's PSNRs; simulations.sweep.comparison_row)."""

    sweep: str
    grid: dict[str, list[Any]]
    points: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    schema: int = COMPARISON_SCHEMA

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "sweep": self.sweep,
            "grid": self.grid,
            "points": self.points,
            "rows": self.rows,
        }

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "comparison.json") -> ComparisonDocument:
        _check_version(doc, COMPARISON_SCHEMA, "a sweep comparison", source)
        for name, kind in (("sweep", str), ("grid", dict), ("points", list), ("rows", list)):
            if not isinstance(doc.get(name), kind):
                raise SchemaError(f"{source}: field {name!r}: missing or not a {kind.__name__}")
        if not all(isinstance(row, dict) for row in doc["rows"]):
            raise SchemaError(f"{source}: field 'rows': not a list of objects")
        return cls(doc["sweep"], doc["grid"], doc["points"], doc["rows"], doc["schema"])


def write_comparison_json(path: str | os.PathLike, doc: ComparisonDocument) -> Path:
    """The one writer of comparison.json (strict JSON, atomic)."""
    return write_json(path, doc.to_json())


def read_comparison(path: str | os.PathLike) -> ComparisonDocument:
    """The one reader of comparison.json: the version checked, exact PSNRs infinite."""
    return ComparisonDocument.from_json(read_json(path), source=str(path))


@dataclass
class LeakageDocument:
    """leakage.json of `medfed attack updates` and of a sweep's privacy probe
    (privacy.attack): the attacked study and round, one entry per attack, and
    what the attacker started from. Written after every attack, so a partial
    document (fewer attacks) is a valid one. Keys a later medfed adds are kept
    in `extra`."""

    study: str
    round: int
    attacks: list[dict[str, Any]]
    global_models: dict[str, Any] | None = None
    mean_guess: dict[str, Any] | None = None
    prior: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = LEAKAGE_SCHEMA

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": self.schema,
            "study": self.study,
            "round": self.round,
            "attacks": self.attacks,
        }
        for name in ("global_models", "mean_guess", "prior"):
            if getattr(self, name) is not None:
                doc[name] = getattr(self, name)
        return {**doc, **self.extra}

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "leakage.json") -> LeakageDocument:
        _check_version(doc, LEAKAGE_SCHEMA, "an attack's leakage.json", source)
        if not isinstance(doc.get("study"), str):
            raise SchemaError(f"{source}: field 'study': missing or not text")
        if type(doc.get("round")) is not int or doc["round"] < 1:
            raise SchemaError(f"{source}: field 'round': {doc.get('round')!r} is not a round")
        attacks = doc.get("attacks")
        if not isinstance(attacks, list) or not all(isinstance(a, dict) for a in attacks):
            raise SchemaError(f"{source}: field 'attacks': not a list of objects")
        known = {"schema", "study", "round", "attacks", "global_models", "mean_guess", "prior"}
        return cls(
            study=doc["study"],
            round=doc["round"],
            attacks=attacks,
            global_models=doc.get("global_models"),
            mean_guess=doc.get("mean_guess"),
            prior=doc.get("prior"),
            extra={k: v for k, v in doc.items() if k not in known},
            schema=doc["schema"],
        )


def write_leakage(path: str | os.PathLike, doc: LeakageDocument) -> Path:
    """The one writer of an attack's leakage.json (strict JSON, atomic; without a
    newline at the end, as leakage.json has always been written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(dumps(doc.to_json(), indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_leakage(path: str | os.PathLike) -> LeakageDocument:
    """The one reader of an attack's leakage.json: the version checked, exact PSNRs
    infinite. benchmarks/results/leakage.json is a benchmark document, refused here."""
    return LeakageDocument.from_json(read_json(path), source=str(path))
