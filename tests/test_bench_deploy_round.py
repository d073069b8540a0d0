"""The deploy-round benchmark's arithmetic and its section, on run folders made here.

(The benchmark itself runs three studies: `medfed bench deploy-round`.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.deploy_round import (
    compare,
    deploy_round_section,
    read_run,
    read_tasks,
    target_row,
    wire_objects,
)
from benchmarks.document import BenchDocument
from study.schema import SchemaError


def _study(folder: Path, round_s: list[float], train_s: list[float], eval_s: list[float]) -> Path:
    """rounds.jsonl + phases.jsonl as the ServerApp writes them (only the keys read)."""
    folder.mkdir(parents=True)
    site = {"ok": True, "seconds": {"train": 0.5, "encrypt": 0.01, "decrypt": 0.02}}
    rounds = [{"round": i + 1, "seconds": s, "sites": [site]} for i, s in enumerate(round_s)]
    phases = [
        {"round": i + 1, "train_round": t, "evaluate_round": e, "aggregate": 0.01, "holdout": 0.1}
        for i, (t, e) in enumerate(zip(train_s, eval_s, strict=True))
    ]
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (folder / "phases.jsonl").write_text("".join(json.dumps(p) + "\n" for p in phases))
    return folder


def _tasks(log_dir: Path, site: int, pid: int, train_s: float, eval_s: float, rounds: int) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"message_type": "query.hello", "seconds": 1.0}]
    for _ in range(rounds):
        rows.append({"message_type": "train", "seconds": train_s})
        rows.append({"message_type": "evaluate", "seconds": eval_s})
    with open(log_dir / f"executor-site-{site}.tasks.jsonl", "w") as fh:
        for r in rows:
            parts = {"pull_s": 0.1, "load_s": 0.0, "app_s": r["seconds"] - 0.3, "push_s": 0.2}
            fh.write(json.dumps({"pid": pid, **parts, **r}) + "\n")


@pytest.fixture
def runs(tmp_path) -> dict:
    sim = _study(tmp_path / "sim", [10.0, 2.0, 4.0], [6.0, 1.5, 2.5], [2.0, 0.4, 1.0])
    flower = _study(tmp_path / "sub", [60.0, 30.0, 30.0], [40.0, 20.0, 20.0], [15, 9.0, 9.0])
    ours = _study(tmp_path / "proc", [20.0, 8.0, 10.0], [12.0, 5.0, 6.0], [6.0, 2.0, 3.0])
    _tasks(ours / "deploy-logs", 0, 111, train_s=2.0, eval_s=0.5, rounds=3)
    _tasks(ours / "deploy-logs", 1, 222, train_s=3.0, eval_s=0.4, rounds=3)
    return {
        "simulated": {"wall_s": 30.0, "rounds": read_run(sim)},
        "subprocess": {"wall_s": 150.0, "rounds": read_run(flower)},
        "process": {
            "wall_s": 60.0,
            "rounds": read_run(ours),
            "tasks": read_tasks(ours / "deploy-logs", 2),
        },
    }


def test_ratios_compare_later_rounds_and_phases(runs):
    c = compare(runs)

    assert c["rounds_compared"] == [2, 3]
    # mean of rounds 2-3: deployed (8 + 10) / 2 = 9 against simulated (2 + 4) / 2 = 3
    assert c["process"]["round_ratio"] == pytest.approx(9 / 3)
    assert c["subprocess"]["round_ratio"] == pytest.approx(30 / 3)
    assert c["process"]["per_round"] == pytest.approx({"1": 2.0, "2": 4.0, "3": 2.5})
    assert c["process"]["train_phase_ratio"] == pytest.approx(5.5 / 2.0)
    assert c["process"]["evaluate_phase_ratio"] == pytest.approx(2.5 / 0.7)
    assert c["subprocess"]["study_ratio"] == pytest.approx(5.0)
    # the deployed runtime's own cost in seconds a round: 9 - 3, 30 - 3
    assert c["process"]["overhead_s"] == pytest.approx(6.0)
    assert c["subprocess"]["overhead_s"] == pytest.approx(27.0)
    assert c["process"]["simulated_round_s"] == pytest.approx(3.0)
    assert c["process"]["deployed_round_s"] == pytest.approx(9.0)
    # the phase ends with the slowest site's message: site 1 trains 3 s, site 0 evaluates 0.5 s
    own = c["process_owners"]
    assert own["train"]["seconds"] == pytest.approx(3.0)
    assert own["train"]["outside_s"] == pytest.approx(5.5 - 3.0)
    assert own["evaluate"]["outside_s"] == pytest.approx(2.5 - 0.5)
    assert own["train"]["app_s"] == pytest.approx(2.7)
    # no evaluate message: its phase (2.5 s) out, its work (0.2 s) into train: (9 - 2.3) / 3
    assert c["process"]["folded_evaluate_ratio_estimate"] == pytest.approx((9 - 2.5 + 0.2) / 3)


def test_tasks_name_the_processes_that_ran_them(runs):
    tasks = runs["process"]["tasks"]
    assert tasks["pids_per_site"] == [[111], [222]]
    assert sorted(tasks["slowest"]) == ["1", "2", "3"]


def _doc(runs, ratio_limit: float = 3.0) -> BenchDocument:
    results = {
        "study": "simulations/studies/demo.toml",
        "sites": 2,
        "overrides": [],
        "repeats": [{"order": list(runs), "runs": runs, "compare": compare(runs)}],
        "summary": {
            "process": {"round_ratio_median": compare(runs)["process"]["round_ratio"]},
            "subprocess": {"round_ratio_median": compare(runs)["subprocess"]["round_ratio"]},
        },
        "target_ratio": ratio_limit,
        "load": {"cpus": 2, "before_1_5_15": [9.5, 10.0, 11.0], "after_1_5_15": [12.0, 11, 10]},
    }
    return BenchDocument(
        benchmark="deploy-round",
        command="medfed bench deploy-round",
        created="2026-01-01T00:00:00+00:00",
        seconds=240.0,
        settings={"quick": False},
        results={
            **results,
            "wire_objects": {"tensors": 8, "plain": 10, "packed": 3},
            "longer": None,
        },
    )


def test_section_shows_ratios_owners_load_and_verdict(runs):
    page: list[str] = []
    deploy_round_section({"deploy-round": _doc(runs)}, page.append)
    text = "\n".join(page)

    assert "| 2 | 2.0 | 30.0 (15.00x) | 8.0 (4.00x) |" in text
    assert "**9.0 (3.00x, +6.0 s)**" in text and "**30.0 (10.00x, +27.0 s)**" in text
    assert "9.5, 10.0, 11.0 before and 12.0, 11.0, 10.0 after" in text
    assert "| train phase | 5.50 | 0.10 | 2.70 | 0.20 | 2.50 |" in text
    assert "per site: 1, 1" in text
    assert (
        "Measured: 3.00x with the executor, 10.00x with Flower's process per message: met." in text
    )
    row = target_row({"deploy-round": _doc(runs)})
    assert row[2] == "yes"
    assert target_row({"deploy-round": _doc(runs, ratio_limit=2.0)})[2].startswith("no, 1.50x")


def test_section_without_results_says_how_to_measure():
    page: list[str] = []
    deploy_round_section({}, page.append)
    assert "run `medfed bench deploy-round`" in "\n".join(page)
    assert target_row({}) is None


def _with_longer_round(runs, folder: Path, deployed_round_s: list[float]) -> dict:
    """The page's document with a 4x longer round: simulated rounds 2-3 average 12 s,
    the executor's rounds are `deployed_round_s`."""
    sim = _study(folder / "long-sim", [30.0, 11.0, 13.0], [20.0, 9, 11], [2.0, 1.0, 1.0])
    train_s = [s - 6.0 for s in deployed_round_s]
    dep = _study(folder / "long-proc", deployed_round_s, train_s, [6.0, 2.5, 2.5])
    _tasks(dep / "deploy-logs", 0, 333, train_s=11.0, eval_s=0.5, rounds=3)
    long_runs = {
        "simulated": {"wall_s": 60.0, "rounds": read_run(sim)},
        "process": {
            "wall_s": 90.0,
            "rounds": read_run(dep),
            "tasks": read_tasks(dep / "deploy-logs", 1),
        },
    }
    doc = _doc(runs)
    doc.results["longer"] = {"factor": 4, "local_epochs": 4, "runs": long_runs}
    return doc


def _page(doc) -> str:
    page: list[str] = []
    deploy_round_section({"deploy-round": doc}, page.append)
    return "\n".join(page)


def test_section_shows_the_overhead_at_a_longer_round(runs, tmp_path):
    text = _page(_with_longer_round(runs, tmp_path, [40.0, 17.5, 19.5]))

    assert "| the study's (1 local epoch) | 3.0 | 9.0 | +6.0 | 3.00x |" in text
    assert "| 4x longer (4 local epochs) | 12.0 | 18.5 | +6.5 | 1.54x |" in text
    assert "grew 4.0x and the deployed overhead went from +6.0 to +6.5 s. It did not grow" in text


def test_section_without_a_longer_run_leaves_that_table_out(runs):
    assert "round length" not in _page(_doc(runs))


def test_longer_round_whose_overhead_grows_says_so(runs, tmp_path):
    text = _page(_with_longer_round(runs, tmp_path, [60.0, 35.0, 37.0]))

    # +6 s at 3 s rounds, +24 s at 12 s rounds: proportional
    assert "went from +6.0 to +24.0 s. It grew with the round" in text


def test_wire_objects_counts_flower_objects_as_the_recorded_run_did():
    # Prepare: the committed deploy-round run (same study, flwr 1.42)
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "deploy-round.json"
    recorded = json.loads(path.read_text())["results"]
    # Execute: through deploy.flwr_internals, the one door to Flower's private modules
    counted = wire_objects(recorded["study"])
    # Assert: the recorded counts; packing turns one object per tensor into a handful
    assert counted == recorded["wire_objects"]
    assert counted["packed"] < counted["tensors"] < counted["plain"]


def test_a_phases_line_that_is_not_a_phases_record_is_named(tmp_path):
    # Prepare: a study folder whose phases.jsonl has a phase that is not seconds
    folder = _study(tmp_path / "sim", [3.0, 3.0], [1.0, 1.0], [0.5, 0.5])
    lines = (folder / "phases.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"train_round": 1.0', '"train_round": "slow"')
    (folder / "phases.jsonl").write_text("\n".join(lines) + "\n")
    # Execute / Assert: the file, its line and the field
    with pytest.raises(SchemaError, match=r"phases\.jsonl, line 2: field 'train_round'"):
        read_run(folder)
