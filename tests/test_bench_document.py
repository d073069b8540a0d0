"""The bench document (benchmarks.document) and the registry (benchmarks.registry):
the committed result files read back typed and re-serialise to the same text;
bad files are named with the field; every benchmark is declared once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.common import load_results, result_document, write_result
from benchmarks.document import (
    SCHEMA,
    BenchDocument,
    BenchDocumentError,
    read_document,
    read_documents,
)
from benchmarks.registry import (
    Benchmark,
    benchmarks,
    get_benchmark,
    list_benchmarks,
    register,
    sections,
    verdicts,
)
from benchmarks.result_types import GpuResults, SpeedResults
from study.schema import loads

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RESULT_FILES = sorted(RESULTS.glob("*.json"))


def _doc(**results) -> dict:
    return {
        "schema": SCHEMA,
        "benchmark": "gpu",
        "command": "medfed bench gpu",
        "created": "2026-12-05T00:00:00+00:00",
        "seconds": 0.5,
        "settings": {"quick": True},
        "results": results,
    }


@pytest.mark.parametrize("path", RESULT_FILES, ids=[p.name for p in RESULT_FILES])
def test_every_result_file_reads_back_typed_and_re_serialises_equal(path: Path) -> None:
    # Prepare: the file as written
    text = path.read_text()
    # Execute: read, type its results, write again
    doc = read_document(path)
    typed = doc.result
    again = BenchDocument(**{**doc.__dict__, "results": typed.to_json()})
    # Assert: the same JSON, key order included, and the same text
    assert type(typed) is get_benchmark(doc.benchmark).result
    assert again.to_json() == loads(text)
    assert list(again.to_json()["results"]) == list(loads(text)["results"])
    assert again.dumps() == text
    assert doc.machine is not None and doc.machine.cpu_count >= 1


def test_the_committed_results_cover_every_registered_benchmark() -> None:
    assert sorted(read_documents(RESULTS)) == sorted(list_benchmarks())


def test_a_document_of_another_schema_is_named_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "gpu.json").write_text(json.dumps({**_doc(available=False), "schema": 2}))

    with pytest.raises(BenchDocumentError, match=r"gpu\.json: field 'schema' is 2"):
        read_documents(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"command": None}, r"field 'command' should be string"),
        ({"seconds": "long"}, r"field 'seconds' should be number"),
        ({"results": []}, r"field 'results' should be object"),
        ({"extra": 1}, r"field 'extra' is not a field of a bench document"),
        ({"machine": {"cpu": "x"}}, r"field 'machine.cpu_count' is missing"),
    ],
)
def test_a_bad_envelope_names_the_file_and_field(tmp_path, change, message) -> None:
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({**_doc(available=False), **change}))

    with pytest.raises(BenchDocumentError, match=f"gpu.json: {message}"):
        read_document(path)


def test_typed_results_name_the_missing_wrong_or_unknown_field() -> None:
    missing = BenchDocument.from_json(_doc(reason="no CUDA"), source="gpu.json")
    wrong = BenchDocument.from_json(_doc(available="no"), source="gpu.json")
    unknown = BenchDocument.from_json(_doc(available=False, cuda=12), source="gpu.json")

    with pytest.raises(BenchDocumentError, match=r"gpu\.json: field 'results\.available' is miss"):
        _ = missing.result
    with pytest.raises(BenchDocumentError, match=r"'results\.available' should be true/false"):
        _ = wrong.result
    with pytest.raises(BenchDocumentError, match=r"'results\.cuda' is not a field of the gpu"):
        _ = unknown.result
    ok = BenchDocument.from_json(_doc(available=False, reason="no CUDA"), source="gpu.json")
    assert ok.result == GpuResults(available=False, reason="no CUDA")
    assert ok.result.to_json() == {"available": False, "reason": "no CUDA"}  # absent: left out


def test_a_failed_run_has_its_error_and_no_typed_results() -> None:
    doc = BenchDocument.from_json(_doc(error="RuntimeError: boom"), source="gpu.json")

    assert not doc.ok and doc.error == "RuntimeError: boom"
    with pytest.raises(BenchDocumentError, match="gpu.json: the benchmark failed: RuntimeError"):
        _ = doc.result


def test_write_result_checks_a_raw_document_and_load_results_gives_it_back(tmp_path) -> None:
    write_result(_doc(available=False, reason="none"), tmp_path)
    written = result_document("speed", "medfed bench speed", {"quick": True}, {}, 1.0)

    assert load_results(tmp_path)["gpu"] == _doc(available=False, reason="none")
    with pytest.raises(BenchDocumentError, match="field 'seconds' is missing"):
        write_result({k: v for k, v in _doc().items() if k != "seconds"}, tmp_path)
    assert isinstance(written, BenchDocument) and written.machine is not None
    with pytest.raises(BenchDocumentError, match="'results.size' is missing from the speed"):
        SpeedResults.from_json(written.results, source="speed.json")


def test_the_registry_declares_each_benchmark_once_with_its_own_result_type() -> None:
    names = list_benchmarks()

    assert names[0] == "speed" and len(names) == len(set(names)) == 12
    for name, bench in benchmarks().items():
        assert bench.result.benchmark == name and bench.help and bench.sections
        assert set(bench.quick) <= set(bench.full) | {"overrides"}
    with pytest.raises(ValueError, match="registered twice"):
        register(get_benchmark("speed"))
    with pytest.raises(ValueError, match="unknown benchmark 'nope'; valid: speed, "):
        get_benchmark("nope")
    with pytest.raises(ValueError, match="its result type SpeedResults is for 'speed'"):
        register(Benchmark("new", "h", lambda s, p: {}, {}, {}, SpeedResults))


def test_sections_and_verdicts_come_in_page_order_each_once() -> None:
    found = sections()

    assert [s.order for s in found] == sorted(s.order for s in found)
    assert len({s.name for s in found}) == len(found) == 11  # federation: three benchmarks
    assert found[0].name.endswith("speed_section") and found[-1].name.endswith("gpu_section")
    assert [v.order for v in verdicts()] == sorted(v.order for v in verdicts())


def test_the_cli_offers_every_registered_benchmark() -> None:
    from simulations.commands.bench_suite import add_bench_commands

    parser = argparse.ArgumentParser()
    add_bench_commands(parser.add_subparsers(dest="bench"))

    for name in list_benchmarks():
        assert parser.parse_args([name, "--quick"]).benchmark_name == name
