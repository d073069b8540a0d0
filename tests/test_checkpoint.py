"""Checkpoints and results files are data, never code: tampering, another
study's checkpoint, a planted pickle and damaged files are refused with a
clear error, and nothing already written is lost on the way."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg

from server.archive import Archive
from server.checkpoint import CheckpointError, CheckpointStore, restore_strategy, strategy_state
from server.results import ResultWriter
from study.config import Study
from study.schema import SchemaError, append_jsonl, read_rounds
from study.task import build_model


def model_arrays(seed: int = 0) -> ArrayRecord:
    torch.manual_seed(seed)
    return ArrayRecord(build_model("xray").state_dict())


def template() -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in model_arrays().items()}


@pytest.fixture
def saved(tmp_path) -> tuple[Study, CheckpointStore]:
    study = Study(out_dir=str(tmp_path), num_sites=2, min_sites=1)
    store = CheckpointStore(tmp_path, study)
    strategy = FedAdam(eta=0.1)
    strategy.m_t = {k: np.full(a.shape, 0.5, np.float32) for k, a in template().items()}
    store.save(1, model_arrays(), strategy, {1: ("a" * 64, "b" * 64)})
    return study, store


def test_a_checkpoint_round_trips_model_strategy_and_shares(saved):
    study, store = saved
    ckpt = store.load(1, template())
    assert ckpt.round == 1 and ckpt.pending_share == {1: ("a" * 64, "b" * 64)}
    for name, ref in template().items():
        np.testing.assert_array_equal(ckpt.model[name], ref)
    fresh = FedAdam(eta=0.9)
    restore_strategy(fresh, ckpt.strategy, ckpt.strategy_arrays)
    assert fresh.eta == 0.1 and fresh.m_t is not None
    assert all(np.all(v == 0.5) for v in fresh.m_t.values())
    assert (store.key_path.stat().st_mode & 0o777) == 0o600


def test_strategy_state_keeps_data_and_skips_functions():
    scalars, arrays = strategy_state(FedAvg(fraction_train=0.5))
    assert scalars["fraction_train"] == {"kind": "float", "value": (0.5).hex()}
    assert "train_metrics_aggr_fn" not in scalars and arrays == {}


def test_changed_arrays_are_refused(saved):
    study, store = saved
    npz = store.dir / "round-1.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x01
    npz.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="arrays were changed"):
        store.load(1, template())


def test_changed_manifest_is_refused(saved):
    study, store = saved
    manifest = store.dir / "round-1.json"
    doc = json.loads(manifest.read_text())
    doc["round"] = 7
    manifest.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="HMAC"):
        store.load(1, template())


def test_checkpoint_of_another_study_configuration_is_refused(saved, tmp_path):
    study, _ = saved
    other = CheckpointStore(tmp_path, study.replace(learning_rate=0.01))
    with pytest.raises(CheckpointError, match="another study configuration"):
        other.load(1, template())
    # runtime settings may change on resume
    CheckpointStore(tmp_path, study.replace(num_cpus=2, round_timeout=60.0)).load(1, template())


def test_a_planted_pickle_is_never_loaded(saved, tmp_path):
    """Even a forger who can read the HMAC key and rewrite the manifest cannot
    make the server unpickle: object arrays are refused."""
    study, store = saved
    marker = tmp_path / "owned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    buf = io.BytesIO()
    np.savez(buf, **{"model/x": np.array([Payload()], dtype=object)}, allow_pickle=True)
    blob = buf.getvalue()
    (store.dir / "round-1.npz").write_bytes(blob)
    manifest = json.loads((store.dir / "round-1.json").read_text())
    import hashlib

    manifest["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    manifest["hmac"] = store._mac(manifest)
    (store.dir / "round-1.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a readable array file"):
        store.load(1, template())
    assert not marker.exists()


def test_arrays_that_do_not_fit_the_model_are_refused(saved):
    study, store = saved
    wrong = ArrayRecord({k: Array(np.zeros(3, np.float32)) for k in template()})
    store.save(2, wrong, FedAvg(), {})
    with pytest.raises(CheckpointError, match="does not fit the study's model"):
        store.load(2, template())


def round_line(rnd: int) -> dict:
    return {"round": rnd, "sites": [], "totals": {}, "global": {}, "seconds": 1.0}


def test_a_fresh_run_sets_an_earlier_run_aside(tmp_path):
    study = Study(out_dir=str(tmp_path))
    append_jsonl(tmp_path / "rounds.jsonl", round_line(1))
    (tmp_path / "summary.json").write_text("{}\n")
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "index.jsonl").write_text('{"round": 1}\n')
    ResultWriter(tmp_path, study).start()
    aside = list((tmp_path / "previous").iterdir())
    assert len(aside) == 1
    assert (aside[0] / "rounds.jsonl").is_file() and (aside[0] / "summary.json").is_file()
    assert (aside[0] / "archive" / "index.jsonl").is_file()
    assert not (tmp_path / "rounds.jsonl").exists() and not (tmp_path / "archive").exists()
    assert json.loads((tmp_path / "config.json").read_text())["schema"] == 2


def test_resume_with_a_damaged_archive_index_keeps_every_file(saved, tmp_path):
    study, store = saved
    append_jsonl(tmp_path / "rounds.jsonl", round_line(1))
    (tmp_path / "summary.json").write_text('{"status": "complete"}\n')
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "index.jsonl").write_text('{"round": 1}\n{"round": 2, oops\n')
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    writer = ResultWriter(tmp_path, study.replace(resume=True))
    with pytest.raises(SchemaError, match=r"index.jsonl, line 2"):
        writer.resume(template(), Archive(tmp_path / "archive"))
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_a_line_cut_short_by_a_crash_is_left_out(tmp_path):
    append_jsonl(tmp_path / "rounds.jsonl", round_line(1))
    with open(tmp_path / "rounds.jsonl", "a") as fh:
        fh.write('{"round": 2, "sites": [')  # the process died mid-write
    assert [r.round for r in read_rounds(tmp_path)] == [1]
    with open(tmp_path / "rounds.jsonl", "a") as fh:
        fh.write("\n")  # a complete but damaged line is an error, not silently dropped
    with pytest.raises(SchemaError, match="line 2"):
        read_rounds(tmp_path)
