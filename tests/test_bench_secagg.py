"""The secagg benchmark reads its studies' round models through the checkpoint
loader, so a changed array file is refused rather than measured."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg

from benchmarks.secagg import round_model
from server.checkpoint import CheckpointError, CheckpointStore
from study.config import Study
from study.task import build_model


def test_the_round_model_is_read_through_the_checking_loader(tmp_path):
    # Prepare: a study's round-1 checkpoint as the ServerApp writes it
    study = Study(out_dir=str(tmp_path), num_sites=2, min_sites=1)
    torch.manual_seed(3)
    model = ArrayRecord(build_model(study.modality).state_dict())
    CheckpointStore(tmp_path, study).save(1, model, FedAvg(), {})
    npz = tmp_path / "checkpoints" / "round-1.npz"
    # Execute: read it, then replace the array file by one with other values
    read = round_model(study, 1)
    with np.load(npz) as data:
        arrays = {k: data[k] + 1 if k.startswith("model/") else data[k] for k in data.files}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    npz.write_bytes(buf.getvalue())
    # Assert: the saved model; the changed file is refused, not read
    assert set(read) == set(model.keys())
    assert all(np.array_equal(read[k], a.numpy()) for k, a in model.items())
    with pytest.raises(CheckpointError, match="arrays were changed after they were written"):
        round_model(study, 1)
