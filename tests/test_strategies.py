"""Every strategy a study may name trains past its first round on the loopback grid.

FedOpt's server step (FedAdam, FedYogi, FedAdagrad) multiplies by a float64
scalar, so its aggregate came back float64; the sites train in the model's own
float32 and the next round refused every reply as "not the study's model".
QFedAvg could not be built at all (Flower requires its client learning rate).
"""

from __future__ import annotations

import numpy as np
import pytest

from client.client_app import app
from study.config import STRATEGIES
from tests.loopback_grid import LoopbackGrid, run_loopback_study, small_study


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs_two_rounds_with_every_site(tmp_path, monkeypatch, strategy):
    study = small_study(tmp_path, monkeypatch, num_rounds=2, strategy=strategy)

    rounds = run_loopback_study(LoopbackGrid(app, study.num_sites, study.to_run_config()), study)

    assert [r.round for r in rounds] == [1, 2]
    failed = [(r.round, s.site, s.error) for r in rounds for s in r.sites if not s.ok]
    assert failed == []


def test_the_global_model_keeps_the_dtypes_it_was_sent_in(tmp_path, monkeypatch):
    from server.checkpoint import CheckpointStore
    from study.task import build_model

    study = small_study(tmp_path, monkeypatch, num_rounds=1, strategy="FedAdam")
    run_loopback_study(LoopbackGrid(app, study.num_sites, study.to_run_config()), study)

    template = {k: v.numpy() for k, v in build_model(study.modality).state_dict().items()}
    saved = CheckpointStore(tmp_path / "run", study).load(1, template).model
    assert {k: v.dtype for k, v in saved.items()} == {k: v.dtype for k, v in template.items()}
    assert all(np.isfinite(v).all() for v in saved.values())
