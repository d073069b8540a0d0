"""Flower's SecAgg+ as a study option (`secure-aggregation = secagg+`).

Most studies here run in this process on a loopback Grid (tests/loopback_grid.py:
the real ServerApp logic, ClientApp, SecAggPlusWorkflow and secaggplus_mod,
messages serialized as on the wire, no Ray); one runs on Flower's simulation
engine and one, marked slow, through `medfed deploy local`.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.common import ndarray_to_bytes
from loopback_grid import LoopbackGrid, set_task_identity

from client.client_app import build_client_app
from client.site import Site
from server.federation import run_study
from server.progress import Events
from server.strategy import StudyStopped, array_bytes, message_bytes
from study.config import Study, StudyError
from study.schema import BYTE_KINDS, read_json, read_rounds, read_summary
from study.secure_aggregation import (
    check_secure_aggregation,
    conflicts,
    quantisation_error_bound,
    reconstruction_threshold,
)
from study.task import build_model

STAGES = ["setup", "share_keys", "collect_masked_vectors", "unmask"]


def tiny(out: Path, validate: bool = True, **changes) -> Study:
    base = dict(
        name="sa",
        num_sites=4,
        num_rounds=2,
        min_sites=3,
        image_size=16,
        phantom_patients=40,
        phantom_size=32,
        batch_size=16,
        holdout_images=16,
        exchange="none",
        secure_aggregation="secagg+",
        out_dir=str(out),
    )
    base.update(changes)
    study = Study(**base)
    if validate:
        study.validate()
    return study


def run_loopback(study: Study, monkeypatch) -> tuple[object, LoopbackGrid]:
    set_task_identity(monkeypatch)
    grid = LoopbackGrid(build_client_app(study), study.num_sites)
    out = Path(study.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outcome = run_study(grid, study, events=Events(out / "events.jsonl"))
    return outcome, grid


def initial_model(study: Study) -> dict[str, torch.Tensor]:
    torch.manual_seed(study.seed)  # what run_study does before building the global model
    return build_model(study.modality).state_dict()


def local_models(study: Study, global_state: dict, rnd: int, sites: list[int]):
    """Each site's trained model and examples, recomputed here (same code, same
    seeds, same process: what the site put into the secure sum)."""
    out = []
    for i in sites:
        update = Site(study, i, study.num_sites).train_round(
            {k: v.clone() for k, v in global_state.items()}, rnd
        )
        state = {
            k: v.detach().numpy().astype(np.float64) for k, v in update.model.state_dict().items()
        }
        out.append((state, update.train.examples))
    return out


def checkpoint_model(out: Path, rnd: int) -> dict[str, np.ndarray]:
    with np.load(out / "checkpoints" / f"round-{rnd}.npz", allow_pickle=False) as data:
        return {k[len("model/") :]: data[k] for k in data.files if k.startswith("model/")}


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    """Phantoms shared by this module's studies; one torch thread, as a simulated
    site has (the sites train in this process, and so do their recomputations)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDFED_DATA_HOME", str(tmp_path_factory.mktemp("data")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory, data_home):
    """4 sites x 2 rounds; site 1 sends a NaN model in round 1 (it refuses to
    put it into the sum and drops out; the protocol removes its masks)."""
    mp = pytest.MonkeyPatch()
    study = tiny(tmp_path_factory.mktemp("secagg") / "run", fault_sites="1:round=1:nan")
    outcome, grid = run_loopback(study, mp)
    yield study, outcome, grid
    mp.undo()


# -- combinations -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"strategy": "Krum"}, "strategy = Krum"),
        ({"strategy": "FedMedian"}, "strategy = FedMedian"),
        ({"strategy": "QFedAvg"}, "strategy = QFedAvg"),
        ({"exchange": "archive"}, "exchange = archive"),
        ({"exchange": "consortium"}, "exchange = consortium"),
        ({"dp": "server-fixed"}, "dp = server-fixed"),
        ({"num_sites": 2, "min_sites": 2}, "at least 3 sites per round"),
        ({"fraction_train": 0.5, "min_sites": 2}, "fraction-train = 0.5"),
        ({"secagg_quantization_range": 2**31}, "secagg-quantization-range"),
    ],
)
def test_refused_combinations_name_their_keys(tmp_path, changes, named):
    study = Study(**{**tiny(tmp_path).__dict__, **changes})  # skip validate: grants etc.
    with pytest.raises(StudyError) as info:
        check_secure_aggregation(study, source="s.toml")
    assert named in str(info.value) and str(info.value).startswith("s.toml: ")
    assert "secagg+" in str(info.value) or "secagg-" in str(info.value)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"strategy": "FedAdam", "dp": "client-fixed"},
        {"strategy": "FedProx", "dp": "client-adaptive"},
        {"strategy": "FedYogi", "dp": "local-dpsgd"},
        {"secure_aggregation": "none", "strategy": "Krum", "exchange": "archive"},
    ],
)
def test_combinations_that_run(tmp_path, changes):
    assert conflicts(Study(**{**tiny(tmp_path).__dict__, **changes})) == []


def test_threshold_is_the_share_of_sampled_sites_and_at_least_three(tmp_path):
    assert reconstruction_threshold(tiny(tmp_path, secagg_threshold=0.5), 4) == 3
    assert reconstruction_threshold(tiny(tmp_path, secagg_threshold=0.5), 16) == 8
    assert reconstruction_threshold(tiny(tmp_path, secagg_threshold=1.0), 16) == 16


def test_server_refuses_before_writing_anything(tmp_path, monkeypatch):
    # the study file is refused by Study.validate; the server checks again for callers
    # that build a Study by hand
    with pytest.raises(StudyError, match="exchange = archive"):
        tiny(tmp_path / "checked", exchange="archive")
    study = tiny(tmp_path / "run", validate=False, exchange="archive")
    with pytest.raises(StudyError, match="exchange = archive"):
        run_loopback(study, monkeypatch)
    assert not (tmp_path / "run" / "config.json").exists()


# -- the aggregate ---------------------------------------------------------------------------
def test_secure_mean_equals_fedavg_within_the_quantisation_bound(dropout_run):
    study, outcome, _ = dropout_run
    out = Path(study.out_dir)
    rounds = read_rounds(out)
    for rnd, sites, start in ((1, [0, 2, 3], initial_model(study)), (2, [0, 1, 2, 3], None)):
        record = rounds[rnd - 1]
        protocol = record.extra["secure_aggregation"]
        assert protocol["summed"] == [f"site-{i}" for i in sites]
        if start is None:
            start = {k: torch.from_numpy(v) for k, v in checkpoint_model(out, rnd - 1).items()}
        models = local_models(study, start, rnd, sites)
        examples = [n for _, n in models]
        assert examples == [s.examples for s in record.sites if s.ok]
        fedavg = {
            k: sum(m[k] * n for m, n in models) / sum(examples) for k in models[0][0]
        }  # float64, the reference
        largest = max(float(np.abs(m[k]).max()) for m, _ in models for k in m)
        bound = quantisation_error_bound(
            examples,
            protocol["max_weight"],
            study.secagg_clipping_range,
            study.secagg_quantization_range,
            largest,
        )
        secure = checkpoint_model(out, rnd)
        error = max(float(np.abs(secure[k] - fedavg[k]).max()) for k in fedavg)
        update = max(float(np.abs(fedavg[k] - start[k].numpy()).max()) for k in fedavg)
        assert 0 < error <= bound, (rnd, error, bound)
        assert bound < update / 100  # the bound is far below what a round changes
        sizes = [len(Site(study, i, study.num_sites).shard.train) for i in range(4)]
        assert protocol["max_weight"] == max(sizes)  # every sampled site's, dropped or not
    final = checkpoint_model(out, 2)
    assert all(np.array_equal(final[k], outcome.arrays[k]) for k in final)


def test_a_site_that_fails_drops_out_and_says_why(dropout_run):
    study, _, _ = dropout_run
    r1, r2 = read_rounds(Path(study.out_dir))
    site1 = {s.site: s for s in r1.sites}["site-1"]
    assert site1.ok is False and "collect_masked_vectors" in site1.error
    assert "NaN" in site1.error
    assert all(s.ok for s in r2.sites)
    assert r1.global_["sites_ok"] == 3 and r2.global_["sites_ok"] == 4


def test_every_stage_message_is_counted(dropout_run):
    study, _, grid = dropout_run
    out = Path(study.out_dir)
    rounds = read_rounds(out)
    plain_keys = {"round", "sites", "totals", "global", "seconds"}
    for record in rounds:
        doc = record.to_json()
        assert set(doc) == plain_keys | {"secure_aggregation"}
        assert all(set(s.bytes) == set(BYTE_KINDS) for s in record.sites)
        assert record.totals["ciphertext_up"] == record.totals["grant_up"] == 0
    stages = [list(r.extra["secure_aggregation"]["stages"]) for r in rounds]
    assert stages == [["examples", *STAGES], STAGES]  # the sizes are asked once per session
    # the bytes every site received and sent (hello messages are enrolment, not rounds)
    counted = {"train", "evaluate", "query.examples"}
    for i in range(study.num_sites):
        node = 1001 + i
        down = sum(
            message_bytes(m)
            for m in grid.delivered
            if m.metadata.dst_node_id == node and m.metadata.message_type in counted
        )
        up = sum(
            message_bytes(m)
            for m in grid.returned
            if m.metadata.src_node_id == node and m.metadata.message_type in counted
        )
        site = [s for r in rounds for s in r.sites if s.site == f"site-{i}"]
        assert sum(s.bytes["message_down"] for s in site) == down
        assert sum(s.bytes["message_up"] for s in site) == up
        per_stage = sum(
            v["up"]
            for r in rounds
            for st in r.extra["secure_aggregation"]["stages"].values()
            for k, v in st["sites"].items()
            if k == f"site-{i}"
        )
        assert per_stage < up  # the rest: the evaluate replies
    # model bytes: the float32 global model down (npy in the fit message, raw for
    # evaluation) and the masked vector up: int64 values and the weight factor
    model = initial_model(study)
    arrays = [v.numpy() for v in model.values()]
    fit_down = sum(len(ndarray_to_bytes(a)) for a in arrays)
    masked = sum(len(ndarray_to_bytes(a.astype(np.int64))) for a in arrays)
    masked += len(ndarray_to_bytes(np.array([1])))
    evaluate_down = array_bytes(ArrayRecord(model))
    for record in rounds:
        for s in record.sites:
            assert s.bytes["model_down"] == fit_down + evaluate_down
            assert s.bytes["model_up"] == (masked if s.ok else 0)
    # progress: every reply event names its round
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    replies = [e for e in events if e["event"] == "reply"]
    assert replies and {e["round"] for e in replies} == {1, 2}


def test_resume_continues_with_secure_rounds(dropout_run, tmp_path, monkeypatch):
    study, _, _ = dropout_run
    copy = tmp_path / "run"
    shutil.copytree(study.out_dir, copy)
    # Archive.keep_rounds (server/archive.py) writes its index into archive/, which a study
    # with exchange = none never creates: every such resume fails there, SecAgg+ or not
    (copy / "archive").mkdir(exist_ok=True)
    resumed = study.replace(out_dir=str(copy), resume=True, num_rounds=3, fault_sites="")
    run_loopback(resumed, monkeypatch)
    rounds = read_rounds(copy)
    assert [r.round for r in rounds] == [1, 2, 3]
    assert list(rounds[2].extra["secure_aggregation"]["stages"])[0] == "examples"
    assert read_summary(copy).status == "complete"


# a central dp mode needs a strategy whose new model is the mean (study.privacy), so the
# server optimiser and adaptive clipping are each run on the secure mean on their own
@pytest.mark.parametrize(("strategy", "dp"), [("FedAdam", "none"), ("FedProx", "client-adaptive")])
def test_server_optimiser_and_adaptive_clipping_on_the_secure_mean(
    strategy, dp, tmp_path, monkeypatch, data_home
):
    study = tiny(
        tmp_path / "run",
        num_sites=3,
        num_rounds=1,
        strategy=strategy,
        dp=dp,
        dp_noise_multiplier=0.01,
    )
    outcome, _ = run_loopback(study, monkeypatch)
    (record,) = outcome.rounds
    assert record.extra["secure_aggregation"]["summed"] == ["site-0", "site-1", "site-2"]
    if dp == "none":
        assert any(
            k.startswith("strategy/m_t/")
            for k in np.load(tmp_path / "run" / "checkpoints" / "round-1.npz").files
        )
        return
    assert record.extra["privacy"]["dp"] == "client-adaptive"
    manifest = read_json(tmp_path / "run" / "checkpoints" / "round-1.json")
    norm = manifest["strategy"]["clipping_norm"]
    assert norm["kind"] == "float" and float.fromhex(norm["value"]) != study.dp_clipping_norm


def test_fewer_masked_vectors_than_the_threshold_halt_before_unmasking(
    tmp_path, monkeypatch, data_home
):
    study = tiny(tmp_path / "run", num_sites=3, num_rounds=1, fault_sites="2:round=1")
    set_task_identity(monkeypatch)
    grid = LoopbackGrid(build_client_app(study), study.num_sites)
    with pytest.raises(StudyStopped, match=r"halted in round 1 \(collect_masked_vectors\)"):
        run_study(grid, study, events=Events(None))
    stages = [
        m.content.config_records["secaggplus_configs"]["stage"]
        for m in grid.delivered
        if m.metadata.message_type == "train"
    ]
    assert "unmask" not in stages and stages.count("collect_masked_vectors") == 3
    summary = read_summary(tmp_path / "run")
    assert summary.status == "stopped" and "injected fault" in json.dumps(summary.failed_sites)


def test_clipped_values_stop_the_study_with_the_key(tmp_path, monkeypatch, data_home):
    study = tiny(tmp_path / "run", num_sites=3, num_rounds=1, secagg_clipping_range=0.05)
    with pytest.raises(StudyStopped, match="raise secagg-clipping-range"):
        run_loopback(study, monkeypatch)
    summary = read_summary(tmp_path / "run")
    assert summary.status == "stopped" and "secagg-clipping-range = 0.05" in summary.reason


def test_benchmark_section_is_rendered_from_the_recorded_result():
    from benchmarks.common import load_results
    from benchmarks.secagg import secagg_section

    docs = load_results(Path(__file__).resolve().parent.parent / "benchmarks" / "results")
    out: list[str] = []
    secagg_section(docs, out.append)
    text = "\n".join(out)
    points = docs["secagg"]["results"]["points"]
    assert [p["sites"] for p in points] == [4, 16]
    for p in points:
        assert f"| {p['sites']} | round s |" in text and f"{p['bytes_ratio']:.2f}" in text
        assert p["failed"] == {"none": 0, "secagg+": 0}
        assert 0 < p["accuracy"]["secagg_vs_fedavg64"] <= p["accuracy"]["bound"]
        up = p["stages"]["collect_masked_vectors"]["up_per_site"]
        assert up == pytest.approx(2 * p["none"]["bytes_per_round"]["model_up"] / p["sites"], 0.01)
    assert "`medfed bench secagg`" in text


# -- Flower's simulation engine and medfed deploy local ------------------------------------
@pytest.mark.federation
def test_a_secure_study_on_the_simulation_engine(tmp_path, data_home):
    from simulations.runner import run_simulated_study

    study = tiny(tmp_path / "run", num_sites=3, num_rounds=1)
    result = run_simulated_study(study)
    (record,) = read_rounds(tmp_path / "run")
    protocol = record.extra["secure_aggregation"]
    assert protocol["summed"] == ["site-0", "site-1", "site-2"]
    assert list(protocol["stages"]) == ["examples", *STAGES]
    for s in record.sites:
        stage_bytes = [protocol["stages"][st]["sites"][s.site] for st in STAGES]
        assert all(b["up"] > 0 and b["down"] > 0 for b in stage_bytes)
        assert s.ok and s.bytes["message_up"] > s.bytes["model_up"] > 0
    assert result.summary.status == "complete"
    assert math.isfinite(record.global_["loss"])


@pytest.mark.slow
def test_medfed_deploy_local_runs_a_secure_study(tmp_path):
    out = tmp_path / "out"
    medfed = str(Path(sys.executable).parent / "medfed")
    settings = {
        "num-rounds": 1,
        "image-size": 16,
        "phantom-patients": 40,
        "phantom-size": 32,
        "holdout-images": 16,
        "exchange": "none",
        "secure-aggregation": "secagg+",
    }
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    res = subprocess.run(
        [medfed, "deploy", "local", "--sites", "3", "--out", str(out), *args],
        cwd=tmp_path,
        env={
            **__import__("os").environ,
            "MEDFED_DATA_HOME": str(tmp_path / "data"),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    (record,) = read_rounds(out)
    protocol = record.extra["secure_aggregation"]
    assert protocol["summed"] == ["site-0", "site-1", "site-2"]
    assert list(protocol["stages"]) == ["examples", *STAGES]
    assert all(s.ok for s in record.sites)
    assert read_summary(out).status == "complete"
