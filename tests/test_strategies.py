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


# -- unit tests: the strategy's own checks -----------------------------------------------
def _strategy(**layout):
    """A MedfedStrategy with only what its checks read: the model sent, the peers'
    reconstructions."""
    from server.strategy import MedfedStrategy

    strategy = MedfedStrategy.__new__(MedfedStrategy)
    strategy.model_layout = layout
    strategy.pending_recon = {}
    return strategy


def test_model_problem_names_what_differs_from_the_model_sent():
    from flwr.app import Array, ArrayRecord

    strategy = _strategy(w=("float32", (2, 3)), b=("float32", (3,)))
    good = ArrayRecord(
        {"w": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(3, np.float32))}
    )
    assert strategy._model_problem(good) is None
    assert strategy._model_problem(None) == "no model arrays"
    extra = ArrayRecord({**dict(good.items()), "z": Array(np.zeros(1, np.float32))})
    assert strategy._model_problem(extra) == "arrays z"
    assert strategy._model_problem(ArrayRecord({"w": good["w"]})) == "arrays no b"
    wrong_dtype = ArrayRecord({"w": good["w"], "b": Array(np.zeros(3, np.float64))})
    assert strategy._model_problem(wrong_dtype).startswith("b: ")
    wrong_shape = ArrayRecord({"w": Array(np.zeros((3, 2), np.float32)), "b": good["b"]})
    assert strategy._model_problem(wrong_shape).startswith("w: ")


def test_peer_records_carry_the_grantors_reconstruction_or_nan():
    from flwr.app import ConfigRecord

    strategy = _strategy()
    strategy.pending_recon = {0: {"mse": 0.01, "psnr": 30.0, "ssim": 0.9}}
    peers = strategy._peer_records(ConfigRecord({"peers": [0, 2], "peer-images": [8, 4]}))
    assert list(peers) == ["site-0", "site-2"]
    assert peers["site-0"] == {"images": 8, "mse": 0.01, "psnr": 30.0, "ssim": 0.9}
    assert peers["site-2"]["images"] == 4 and np.isnan(peers["site-2"]["psnr"])
    with pytest.raises(ValueError, match="2 peers but 1 image counts"):
        strategy._peer_records(ConfigRecord({"peers": [0, 2], "peer-images": [8]}))
    with pytest.raises(KeyError):
        strategy._peer_records(ConfigRecord({"peers": [0]}))


def test_build_strategy_configures_flowers_strategy_from_the_study():
    from flwr.serverapp import strategy as flwr_strategies

    from server.strategy import build_strategy
    from study.config import Study

    study = Study(strategy="FedProx", proximal_mu=0.3, min_sites=3, fraction_train=0.5)
    built = build_strategy(study)
    assert type(built) is flwr_strategies.FedProx
    assert (built.proximal_mu, built.fraction_train, built.fraction_evaluate) == (0.3, 0.5, 1.0)
    assert (built.min_train_nodes, built.min_evaluate_nodes, built.min_available_nodes) == (3, 3, 3)
    qfed = build_strategy(Study(strategy="QFedAvg", learning_rate=0.01))
    assert (qfed.client_learning_rate, qfed.train_loss_key) == (0.01, "train-loss")
    unchecked = Study()
    object.__setattr__(unchecked, "strategy", "FedNope")  # past the study's own check
    with pytest.raises(ValueError, match="strategy 'FedNope' is not supported; valid: FedAvg"):
        build_strategy(unchecked)


def test_build_strategy_wraps_a_central_dp_mode_and_weighs_sites_equally():
    from server.strategy import build_strategy
    from study.config import Study
    from study.privacy import UNIFORM_WEIGHT

    built = build_strategy(Study(dp="server-fixed", dp_noise_multiplier=0.5, num_sites=4))
    assert type(built).__name__ == "DifferentialPrivacyServerSideFixedClipping"
    assert built.strategy.weighted_by_key == UNIFORM_WEIGHT
    plain = build_strategy(Study(dp="local-dpsgd"))
    assert plain.weighted_by_key == "num-examples"
