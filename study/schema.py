"""The results schema: one typed definition of every file a study writes, and
the one writer and reader of each.

A study's run folder holds
    config.json     RunConfig     the study and the versions it ran with
    rounds.jsonl    RoundRecord   one line per completed round
    summary.json    Summary       totals, per-site bytes, the final metrics
    events.jsonl    progress events (see server.progress)
Benchmarks write BenchDocument files (benchmarks/results/*.json).

All JSON medfed writes is strict RFC 8259 (`dumps` refuses NaN and
infinity): a number that is undefined (a mean over nothing) is written as
null, and the PSNR of an exact reconstruction, which is infinite, is written
as null with `"exact": true` in the same object. `loads` restores those
PSNRs to infinity, so code that reads results sees the numbers as computed.

The version of a run folder's files is config.json's `schema`; readers refuse
a folder written by another version with a message that says which.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
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


@dataclass
class RoundRecord:
    """One line of rounds.jsonl: per-site accounting, totals, global metrics."""

    round: int
    sites: list[SiteRecord]
    totals: dict[str, int]
    global_: dict[str, Any]  # "global" in JSON
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)  # keys other issues add (e.g. privacy)

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
            **self.extra,
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
    extra: dict[str, Any] = field(default_factory=dict)  # keys other issues add

    def to_json(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        doc = {"schema": doc.pop("schema"), **doc}
        for key in ("stopped_round", "reason", "failed_sites"):
            if doc[key] is None:
                del doc[key]
        return {**doc, **self.extra}

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


# -- benchmark documents -----------------------------------------------------------------
BENCH_SCHEMA = 1


@dataclass
class BenchDocument:
    """benchmarks/results/<benchmark>.json."""

    benchmark: str
    command: str
    created: str
    seconds: float
    settings: dict[str, Any]
    machine: dict[str, Any]
    results: dict[str, Any]
    schema: int = BENCH_SCHEMA

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        return {"schema": doc.pop("schema"), **doc}

    @classmethod
    def from_json(
        cls, doc: Mapping[str, Any], *, source: str = "benchmark document"
    ) -> BenchDocument:
        if doc.get("schema") != BENCH_SCHEMA or "benchmark" not in doc:
            raise SchemaError(f"{source}: not a schema-{BENCH_SCHEMA} benchmark document")
        names = {f.name for f in fields(cls)}
        missing = names - set(doc)
        if missing:
            raise SchemaError(f"{source}: benchmark document lacks {', '.join(sorted(missing))}")
        return cls(**{k: doc[k] for k in names})


def read_bench(path: str | os.PathLike) -> BenchDocument:
    return BenchDocument.from_json(read_json(path), source=str(path))
