"""The bench document: benchmarks/results/<benchmark>.json, the one format every
benchmark writes and every reader (verdicts, sections, report) reads.

A document (schema 1) is the envelope `BenchDocument` (which benchmark, the
command that wrote it, when, how long it took, its settings, the machine) around
the benchmark's `results`. Each benchmark declares its typed results in the
registry (benchmarks.registry): a `Results` dataclass whose fields are the
top-level keys of `results`, in the order the benchmark writes them; the values
below that level are the JSON the benchmark wrote (numbers, lists, dicts).
A benchmark that failed records `{"error": "..."}` as its results instead.

Reading checks the schema version, the envelope's fields and, on first use of
`BenchDocument.result`, the typed results; every error is a BenchDocumentError
(a ValueError) that names the file and the field. Numbers are written as strict
JSON through study.schema (NaN as null, an exact PSNR as null with "exact").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from study.schema import dumps, loads

SCHEMA = 1
ENVELOPE = ("schema", "benchmark", "command", "created", "seconds", "settings", "machine")


class BenchDocumentError(ValueError):
    """A result file that is not a bench document of this schema; names file and field."""


class _Absent:
    """The value of an optional results field the benchmark did not write."""

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


def _type_name(hint: Any) -> str:
    if hint is Any:
        return "any value"
    if isinstance(hint, type):
        names = {"float": "number", "int": "integer", "str": "string", "bool": "true/false"}
        names |= {"dict": "object", "list": "list", "NoneType": "null"}
        return names.get(hint.__name__, hint.__name__)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not _Absent)
    if origin is list:
        return "list"
    if origin is dict:
        return "object"
    return str(hint)


def _matches(value: Any, hint: Any) -> bool:
    """Does a JSON value have the type a field declares? (containers: the outer type)"""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is not None:
        hint = origin
    if hint is float:  # an integral float may be written as 1; NaN/inf are read back as floats
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (list, tuple):
        return isinstance(value, list | tuple)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


_R = TypeVar("_R", bound="Results")


@dataclass
class Results:
    """Base of a benchmark's typed results. A subclass is a dataclass whose fields
    are the top-level keys of its `results`, declared in the order the benchmark
    writes them; a field with the default ABSENT is optional."""

    benchmark: ClassVar[str] = "benchmark"

    @classmethod
    def from_json(cls: type[_R], results: Mapping[str, Any], *, source: str) -> _R:
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in results if k not in names]
        if unknown:
            raise BenchDocumentError(
                f"{source}: field 'results.{unknown[0]}' is not a field of the {cls.benchmark} "
                f"results (its fields: {', '.join(names)})"
            )
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in results:
                if f.default is ABSENT:
                    continue
                raise BenchDocumentError(
                    f"{source}: field 'results.{f.name}' is missing from the {cls.benchmark} "
                    "results"
                )
            value = results[f.name]
            if not _matches(value, hints[f.name]):
                raise BenchDocumentError(
                    f"{source}: field 'results.{f.name}' should be {_type_name(hints[f.name])}, "
                    f"got {type(value).__name__} {value!r:.60}"
                )
            values[f.name] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The results as written: every field the benchmark wrote, in field order."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not ABSENT
        }


@dataclass(frozen=True)
class Machine:
    """The machine a document was measured on (common.machine_info)."""

    cpu: str
    cpu_count: int
    memory_gb: float
    gpus: list[str]
    platform: str
    python: str
    torch_threads: int | None
    packages: dict[str, str | None]
    git_commit: str

    @classmethod
    def from_json(cls, doc: Any, *, source: str) -> Machine:
        if not isinstance(doc, Mapping):
            raise BenchDocumentError(f"{source}: field 'machine' should be an object")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in doc:
                raise BenchDocumentError(f"{source}: field 'machine.{f.name}' is missing")
            if not _matches(doc[f.name], hints[f.name]):
                raise BenchDocumentError(
                    f"{source}: field 'machine.{f.name}' should be {_type_name(hints[f.name])}, "
                    f"got {doc[f.name]!r:.60}"
                )
            values[f.name] = doc[f.name]
        extra = [k for k in doc if k not in values]
        if extra:
            raise BenchDocumentError(f"{source}: field 'machine.{extra[0]}' is not a machine field")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BenchDocument:
    """benchmarks/results/<benchmark>.json: one benchmark's run."""

    benchmark: str
    command: str  # the exact command that wrote it (`medfed bench speed --quick`)
    created: str  # ISO 8601, UTC
    seconds: float  # how long the benchmark ran
    settings: dict[str, Any]  # `quick` and the sizes/repeats used
    results: dict[str, Any]  # the benchmark's results as written (`result` types them)
    machine: Machine | None = None  # absent only in documents written by hand (tests)
    schema: int = SCHEMA
    source: str = field(default="", compare=False, repr=False)  # the file it was read from

    @property
    def error(self) -> str | None:
        """Why the benchmark failed (its results are only this), else None."""
        return str(self.results["error"]) if "error" in self.results else None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def quick(self) -> bool:
        return bool(self.settings.get("quick", False))

    @property
    def result(self) -> Results:
        """The typed results (the type the registry declares for this benchmark).
        A failed run has none: check `ok` (or `error`) first."""
        from benchmarks.registry import get_benchmark

        where = self.source or f"the {self.benchmark} document"
        if self.error is not None:
            raise BenchDocumentError(f"{where}: the benchmark failed: {self.error}")
        try:
            kind = get_benchmark(self.benchmark).result
        except ValueError as exc:
            raise BenchDocumentError(f"{where}: field 'benchmark': {exc}") from None
        return kind.from_json(self.results, source=where)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": self.schema,
            "benchmark": self.benchmark,
            "command": self.command,
            "created": self.created,
            "seconds": self.seconds,
            "settings": self.settings,
        }
        if self.machine is not None:
            doc["machine"] = self.machine.to_json()
        doc["results"] = self.results
        return doc

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "benchmark document") -> BenchDocument:
        if not isinstance(doc, Mapping):
            raise BenchDocumentError(f"{source}: not a JSON object")
        if doc.get("schema") != SCHEMA:
            raise BenchDocumentError(
                f"{source}: field 'schema' is {doc.get('schema')!r}; medfed reads bench "
                f"documents of schema {SCHEMA}: re-run the benchmark (`medfed bench NAME`)"
            )
        checks = {
            "benchmark": str,
            "command": str,
            "created": str,
            "seconds": float,
            "settings": dict,
            "results": dict,
        }
        for name, kind in checks.items():
            if name not in doc:
                raise BenchDocumentError(f"{source}: field '{name}' is missing")
            if not _matches(doc[name], kind):
                raise BenchDocumentError(
                    f"{source}: field '{name}' should be {_type_name(kind)}, got {doc[name]!r:.60}"
                )
        extra = [k for k in doc if k not in (*ENVELOPE, "results")]
        if extra:
            raise BenchDocumentError(
                f"{source}: field '{extra[0]}' is not a field of a bench document "
                f"(its fields: {', '.join((*ENVELOPE, 'results'))})"
            )
        machine = doc.get("machine")
        return cls(
            benchmark=doc["benchmark"],
            command=doc["command"],
            created=doc["created"],
            seconds=doc["seconds"],
            settings=dict(doc["settings"]),
            results=dict(doc["results"]),
            machine=None if machine is None else Machine.from_json(machine, source=source),
            source=source,
        )

    def dumps(self) -> str:
        """The file's text: strict JSON, indented, with a final newline."""
        return dumps(self.to_json(), indent=2) + "\n"


# what the readers (verdicts, sections) take: documents by benchmark name, typed or as
# the raw JSON of common.load_results (which `documents` parses)
Docs = Mapping[str, BenchDocument | Mapping[str, Any]]


def read_document(path: str | Path) -> BenchDocument:
    """One result file; BenchDocumentError (or study.schema's SchemaError, for
    text that is not JSON) names it."""
    path = Path(path)
    return BenchDocument.from_json(loads(path.read_text(), source=str(path)), source=str(path))


def write_document(doc: BenchDocument, results_dir: str | Path) -> Path:
    """Write `doc` to results_dir/<benchmark>.json; returns the file."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{doc.benchmark}.json"
    path.write_text(doc.dumps())
    return path


def read_documents(results_dir: str | Path) -> dict[str, BenchDocument]:
    """benchmark name -> document, for every results_dir/*.json."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(
            f"no benchmark results in {results_dir}; run `medfed bench all --quick` first"
        )
    docs = {}
    for path in sorted(results_dir.glob("*.json")):
        doc = read_document(path)
        docs[doc.benchmark] = doc
    return docs


def documents(docs: Docs) -> dict[str, BenchDocument]:
    """Documents by benchmark name, as the readers take them: a mapping of
    BenchDocument, or of the raw JSON (`common.load_results`, or a document built
    in memory), which is parsed here. In memory `schema`, `benchmark` (the key)
    and `settings` may be left out; everything else is checked as from a file."""
    out = {}
    for name, doc in docs.items():
        if not isinstance(doc, BenchDocument):
            given = {"schema": SCHEMA, "benchmark": name, "settings": {}, **doc}
            doc = BenchDocument.from_json(given, source=f"the {name} document")
        out[name] = doc
    return out
