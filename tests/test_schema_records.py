"""Typed result records (study/schema.py): a round's `privacy` and
`secure_aggregation`, phases.jsonl's PhaseRecord, and the summary's privacy.

tests/data/rounds_v2_lines.jsonl holds real rounds.jsonl lines of small
studies written before these fields were typed (client-fixed; SecAgg+ with
local-dpsgd; SecAgg+ with client-adaptive): read and written back they must
be the same bytes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from study.schema import (
    SCHEMA,
    AggregationRecord,
    LeakageDocument,
    PhaseRecord,
    PrivacyRecord,
    RoundRecord,
    SchemaError,
    SecureAggregationRecord,
    Summary,
    dumps,
    loads,
    read_comparison,
    read_leakage,
    read_phases,
    read_rounds,
    write_comparison_json,
    write_json,
    write_leakage,
)

LINES = Path(__file__).parent / "data" / "rounds_v2_lines.jsonl"


def _lines() -> list[str]:
    return [line for line in LINES.read_text().splitlines() if line]


@pytest.mark.parametrize("index", range(3))
def test_real_round_lines_read_and_write_back_byte_identical(index):
    line = _lines()[index]
    record = RoundRecord.from_json(loads(line))
    assert dumps(record.to_json()) == line


def test_privacy_and_secure_aggregation_are_typed():
    dp_line, local_line, adaptive_line = (RoundRecord.from_json(loads(x)) for x in _lines())
    assert isinstance(dp_line.privacy, PrivacyRecord)
    assert dp_line.secure_aggregation is None
    assert dp_line.privacy.dp == "client-fixed"
    assert dp_line.privacy.aggregation_weights == "uniform"
    assert dp_line.privacy.sites is None
    assert local_line.privacy.level == "sample"
    assert set(local_line.privacy.sites) == {"site-0", "site-1", "site-2", "site-3"}
    assert isinstance(local_line.secure_aggregation, SecureAggregationRecord)
    assert local_line.secure_aggregation.protocol == "secagg+"
    assert local_line.secure_aggregation.summed == ["site-0", "site-1", "site-2", "site-3"]
    # the order they were set is the order written: SecAgg+ then the accountant under
    # local-dpsgd; the aggregation's privacy first under a central mode
    assert list(local_line.to_json())[-2:] == ["secure_aggregation", "privacy"]
    assert list(adaptive_line.to_json())[-2:] == ["privacy", "secure_aggregation"]
    # older readers' dict view is the JSON form
    assert dp_line.extra["privacy"]["epsilon"] == dp_line.privacy.epsilon
    protocol = local_line.extra["secure_aggregation"]
    assert protocol["max_weight"] == local_line.secure_aggregation.max_weight > 1  # examples
    assert adaptive_line.secure_aggregation.max_weight == 1  # every site weighs 1


def test_an_infinite_epsilon_is_null_in_json_and_infinite_when_read():
    record = PrivacyRecord(
        dp="none",
        rounds_done=2,
        epsilon=math.inf,
        delta=1e-5,
        level="site",
        noise_multiplier=0.0,
        sample_rate=1.0,
        steps=2,
        accountant="opacus-rdp",
        protects_against="nobody",
    )
    doc = json.loads(dumps(record.to_json()))
    assert doc["epsilon"] is None
    assert PrivacyRecord.from_json(doc).epsilon == math.inf
    assert PrivacyRecord.from_json(doc) == record


def test_setting_privacy_through_the_dict_view_or_the_attribute_is_the_same():
    a = RoundRecord.build(1, [], {"accuracy": 0.5}, 1.0)
    b = RoundRecord.build(1, [], {"accuracy": 0.5}, 1.0)
    a.extra["privacy"] = {"aggregation_weights": "uniform", "effective_noise_multiplier": 1.5}
    b.privacy = AggregationRecord("uniform", 1.5)
    assert a.privacy == b.privacy == AggregationRecord("uniform", 1.5)
    assert dumps(a.to_json()) == dumps(b.to_json())
    a.extra["warnings"] = ["w"]
    a.privacy = None
    assert list(a.to_json())[-1] == "warnings" and "privacy" not in a.to_json()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("privacy", {"dp": "none", "epsilon": None, "colour": 1}, "privacy: unknown field"),
        ("privacy", [1, 2], "privacy: not a JSON object"),
        ("secure_aggregation", {"protocol": "secagg+"}, "secure_aggregation: missing sites_"),
    ],
)
def test_a_malformed_typed_entry_is_refused_naming_the_field(key, value, match):
    record = RoundRecord.build(1, [], {}, 1.0)
    with pytest.raises(ValueError, match=match):
        record.extra[key] = value


def test_a_malformed_privacy_line_is_a_schema_error_naming_the_line(tmp_path):
    line = loads(_lines()[0])
    line["privacy"]["colour"] = "red"
    (tmp_path / "rounds.jsonl").write_text(dumps(line) + "\n")
    with pytest.raises(SchemaError, match=r"rounds\.jsonl, line 1: not a round record.*colour"):
        read_rounds(tmp_path)


def test_the_summary_privacy_is_typed_and_written_as_before():
    privacy = RoundRecord.from_json(loads(_lines()[0])).privacy
    summary = Summary(
        status="complete",
        study="demo",
        method="aes-gcm",
        exchange="archive",
        modality="xray",
        sites=4,
        rounds=1,
        bytes={},
        bytes_per_round={},
        bytes_per_site={},
        upload_seconds_per_round={},
        final={},
        seconds=1.0,
    )
    summary.privacy = privacy
    doc = summary.to_json()
    assert list(doc)[-1] == "privacy" and doc["privacy"] == privacy.to_json()
    again = Summary.from_json(loads(dumps(doc)))
    assert again.privacy == privacy
    assert again.extra.get("privacy") == privacy.to_json()  # what older readers read


# -- phases.jsonl ------------------------------------------------------------------------
def _run_folder(tmp_path: Path, phases: list[dict], schema: int = SCHEMA) -> Path:
    write_json(tmp_path / "config.json", {"schema": schema, "study": {}})
    (tmp_path / "phases.jsonl").write_text("".join(dumps(p) + "\n" for p in phases))
    return tmp_path


def test_read_phases_gives_typed_records_by_round(tmp_path):
    line = {
        "round": 1,
        "train_round": 2.5,
        "aggregate": 0.01,
        "evaluate_round": 1.0,
        "holdout": 0.2,
    }
    folder = _run_folder(tmp_path, [line, {**line, "round": 2}])
    phases = read_phases(folder)
    assert sorted(phases) == [1, 2]
    assert phases[2].train_round == 2.5 and phases[2].holdout == 0.2
    assert dumps(phases[1].to_json()) == dumps(line)  # the line, byte for byte
    assert read_phases(folder / "phases.jsonl") == phases


def test_read_phases_checks_the_folders_schema(tmp_path):
    folder = _run_folder(tmp_path, [{"round": 1, "train_round": 1.0}], schema=1)
    with pytest.raises(SchemaError, match="results schema 1; this medfed reads schema 2"):
        read_phases(folder)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ({"train_round": 1.0}, r"phases\.jsonl, line 1: field 'round'"),
        (
            {"round": 1, "train_round": "slow"},
            r"line 1: field 'train_round': 'slow' is not seconds",
        ),
        ({"round": 1, "holdout": -1.0}, r"line 1: field 'holdout'"),
    ],
)
def test_read_phases_names_the_line_and_field_of_a_bad_record(tmp_path, line, match):
    with pytest.raises(SchemaError, match=match):
        read_phases(_run_folder(tmp_path, [line]))


def test_a_phase_line_of_a_later_medfed_keeps_its_extra_phase():
    record = PhaseRecord.from_json({"round": 3, "train_round": 1.0, "upload": 2.0})
    assert record.evaluate_round is None
    assert record.to_json() == {"round": 3, "train_round": 1.0, "upload": 2.0}


def test_read_phases_of_a_folder_without_phases_is_empty(tmp_path):
    write_json(tmp_path / "config.json", {"schema": SCHEMA})
    assert read_phases(tmp_path) == {}


# -- comparison.json and leakage.json ------------------------------------------------------
SWEEP = Path(__file__).parent / "data" / "sweep"  # a fresh `medfed sweep` of two dp modes
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_a_sweeps_comparison_reads_and_writes_back_byte_identical(tmp_path):
    doc = read_comparison(SWEEP / "comparison.json")
    assert doc.sweep == "h6" and [p["dp"] for p in doc.points] == ["none", "client-fixed"]
    assert [row["dp"] for row in doc.rows] == ["none", "client-fixed"]
    assert doc.rows[0]["epsilon"] is None  # dp = none: no bound (infinite, null in JSON)
    assert doc.rows[1]["epsilon"] > 0
    out = write_comparison_json(tmp_path / "comparison.json", doc)
    assert out.read_bytes() == (SWEEP / "comparison.json").read_bytes()


def test_an_attacks_leakage_reads_and_writes_back_byte_identical(tmp_path):
    doc = read_leakage(SWEEP / "leakage.json")
    assert doc.study == "h6[dp=client-fixed]" and doc.round == 1
    assert {a["defense"] for a in doc.attacks} == {"client-fixed"}
    assert doc.mean_guess is not None and doc.global_models is not None
    out = write_leakage(tmp_path / "leakage.json", doc)
    assert out.read_bytes() == (SWEEP / "leakage.json").read_bytes()


def test_an_exact_psnr_in_a_leakage_file_reads_as_infinite(tmp_path):
    doc = LeakageDocument("s", 1, [{"attack": "analytic", "psnr": math.inf}])
    again = read_leakage(write_leakage(tmp_path / "leakage.json", doc))
    assert again.attacks[0]["psnr"] == math.inf and again.attacks[0]["exact"] is True


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (
            {"schema": 2, "study": "s", "round": 1, "attacks": []},
            "of schema 2; this medfed reads schema 1",
        ),
        ({"schema": 1, "study": "s", "round": 0, "attacks": []}, "field 'round': 0"),
        ({"schema": 1, "study": "s", "round": 1, "attacks": {}}, "field 'attacks'"),
        ([1], "not an attack's leakage.json"),
    ],
)
def test_a_leakage_file_that_is_not_one_is_refused_naming_the_field(tmp_path, doc, match):
    write_json(tmp_path / "leakage.json", doc)
    with pytest.raises(SchemaError, match=match):
        read_leakage(tmp_path / "leakage.json")


def test_a_comparison_of_another_schema_or_shape_is_refused(tmp_path):
    write_json(
        tmp_path / "c.json", {"schema": 9, "sweep": "s", "grid": {}, "points": [], "rows": []}
    )
    with pytest.raises(SchemaError, match=r"c\.json: a sweep comparison of schema 9"):
        read_comparison(tmp_path / "c.json")
    write_json(tmp_path / "c.json", {"schema": 1, "sweep": "s", "grid": {}, "points": []})
    with pytest.raises(SchemaError, match="field 'rows': missing or not a list"):
        read_comparison(tmp_path / "c.json")


def test_the_benchmarks_leakage_result_is_a_benchmark_document_not_an_attacks():
    with pytest.raises(SchemaError, match="a benchmark document \\('leakage'\\)"):
        read_leakage(RESULTS / "leakage.json")
