"""The GPU settings on a machine without one: a clear error before anything
starts, and where CUDA is present the sites' learned encryptors go to it
(CUDA is faked here; the real GPU run is `medfed bench gpu`)."""

from __future__ import annotations

import pytest
import torch

from client.site import Site
from simulations.runner import backend_config
from study.config import Study


def test_num_gpus_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    study = Study(num_gpus=0.5)
    with pytest.raises(ValueError, match=r"num-gpus = 0.5, but torch .* sees no CUDA GPU"):
        backend_config(study)
    # a remote cluster may have the GPUs the driver lacks
    cfg = backend_config(Study(num_gpus=0.5, ray_address="10.0.0.1:6379"))
    # max_restarts: Ray restarts a dead site worker for the next round
    assert cfg["client_resources"] == {
        "num_cpus": 1,
        "num_gpus": 0.5,
        "max_restarts": -1,
        "max_task_retries": 1,
    }
    assert cfg["init_args"]["address"] == "10.0.0.1:6379"


def test_gpu_share_goes_to_two_sites_per_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = backend_config(Study(num_gpus=0.5))
    assert cfg["init_args"]["num_gpus"] == 1
    assert cfg["client_resources"]["num_gpus"] == 0.5


@pytest.mark.parametrize(
    ("method", "num_gpus", "cuda", "device"),
    [
        ("deepedn", 0.5, True, "cuda"),
        ("deepedn", 0.5, False, None),
        ("deepedn", 0.0, True, None),
        ("aes-gcm", 0.5, True, None),  # nothing to put on a GPU
    ],
)
def test_learned_encryptors_use_the_sites_gpu(
    tmp_path, monkeypatch, method, num_gpus, cuda, device
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    site = Site(Study(method=method, num_gpus=num_gpus, out_dir=str(tmp_path)), 0, 4)
    assert site._method_options().get("device") == device
