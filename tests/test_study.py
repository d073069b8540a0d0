"""Study files: parsing, validation errors that name the key, pyproject in step."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from simulations.cli import main
from study.config import Fault, Study, StudyError, parse_overrides

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "simulations" / "studies" / "demo.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_demo_study_parses_with_issue_settings():
    study = Study.from_toml(DEMO)
    assert (study.num_sites, study.num_rounds, study.modality) == (4, 3, "xray")
    assert (study.method, study.strategy, study.num_cpus) == ("learned-codec-aes", "FedAvg", 1)
    assert study.method_epochs == 8  # each site fits its own codec in round 1
    assert study.out_dir == "runs/demo"


def test_pyproject_flower_config_mirrors_demo_study():
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    flwr_cfg = doc["tool"]["flwr"]["app"]["config"]
    demo = Study.from_toml(DEMO).to_run_config()
    assert set(flwr_cfg) == set(Study.keys())
    assert {k: v for k, v in flwr_cfg.items() if k != "out-dir"} == {
        k: v for k, v in demo.items() if k != "out-dir"
    }
    assert Study.from_mapping(flwr_cfg).num_sites == 4


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("num-sitez = 4\n", ["num-sitez", "unknown key", "num-sites"]),
        ("num-sites = 0\n", ["num-sites", "0", "at least 1"]),
        ("num-rounds = -2\n", ["num-rounds", "-2", "at least 1"]),
        ('num-rounds = "three"\n', ["num-rounds", "three", "int"]),
        ('method = "rot13"\n', ["method", "rot13", "aes-gcm"]),
        ('exchange = "email"\n', ["exchange", "email", "consortium"]),
        ("min-sites = 9\n", ["min-sites", "9", "num-sites"]),
        ("learning-rate = 0\n", ["learning-rate", "> 0"]),
        ('fault-sites = "7"\n', ["fault-sites", "7"]),
        ("[training]\nepochs = 2\n", ["training", "top level"]),
    ],
)
def test_bad_study_names_key_value_and_rule(tmp_path, text, fragments):
    with pytest.raises(StudyError) as info:
        Study.from_toml(write(tmp_path, text))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, "num-sites = 3\n")
    study = Study.from_toml(
        path, parse_overrides(["num-rounds=5", "learning-rate=0.01", "resume=true"])
    )
    assert (study.num_sites, study.num_rounds, study.learning_rate, study.resume) == (
        3,
        5,
        0.01,
        True,
    )
    with pytest.raises(StudyError, match="expected key=value"):
        parse_overrides(["num-rounds"])
    with pytest.raises(StudyError, match="batch-size"):
        Study.from_toml(path, {"batch-size": "0"})


def test_cli_run_rejects_bad_study_before_running(tmp_path, capsys):
    path = write(tmp_path, "num-sites = 0\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "num-sites" in err and "at least 1" in err
    assert not (tmp_path / "out").exists()


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "sweep", "data", "methods", "bench"):
        assert command in out


def test_fault_plan_parsing():
    study = Study(num_sites=4, fault_sites="1:round=2, 3")
    assert study.fault_plan == {1: Fault(2), 3: Fault(None)}
    slow = Study(num_sites=4, fault_sites="1:round=2:stall=30")
    assert slow.fault_plan == {1: Fault(2, 30.0, "stall")}
    assert Study(num_sites=4, fault_sites="2:nan").fault_plan == {2: Fault(None, 0.0, "nan")}
    assert Study(num_sites=4, fault_sites="0:round=3:crash").fault_plan[0].kind == "crash"


@pytest.mark.parametrize(
    ("key", "value", "fragments"),
    [
        ("resume", "ture", ["resume", "ture", "not a boolean", "true", "false"]),
        ("resume", "nope", ["resume", "nope", "not a boolean"]),
        ("learning-rate", "nan", ["learning-rate", "finite"]),
        ("learning-rate", "inf", ["learning-rate", "finite"]),
        ("learning-rate", "1e30", ["learning-rate", "at most 10"]),
        ("dirichlet-alpha", "-inf", ["dirichlet-alpha", "finite"]),
        ("num-gpus", "nan", ["num-gpus", "finite"]),
        ("phantom-size", "25000", ["phantom-size", "25000", "at most 4096"]),
        ("phantom-patients", "10000000", ["phantom-patients", "at most 100000"]),
        ("num-rounds", "1000000", ["num-rounds", "at most"]),
        ("strategy", "FedAvgg", ["strategy", "FedAvgg", "FedAvg", "FedProx"]),
        ("dp", "client", ["dp", "client-fixed", "local-dpsgd"]),
        ("fault-sites", "1:stall=x", ["fault-sites", "stall"]),
    ],
)
def test_typos_nan_and_huge_values_are_refused(tmp_path, key, value, fragments):
    path = write(tmp_path, "num-sites = 3\n")
    with pytest.raises(StudyError) as info:
        Study.from_toml(path, parse_overrides([f"{key}={value}"]))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_booleans_accept_the_usual_spellings(tmp_path):
    path = write(tmp_path, "num-sites = 3\n")
    for text, expected in (("TRUE", True), ("yes", True), ("0", False), ("False", False)):
        assert Study.from_toml(path, {"resume": text}).resume is expected


@pytest.mark.parametrize(
    ("key", "value", "fragments"),
    [
        # numpy's and torch's seeding, and the seeds derived per site and round, need < 2^32
        ("seed", str(10**15), ["seed", "1000000000000000", "0 to 4294967295"]),
        ("seed", str(2**32), ["seed", "0 to 4294967295"]),
        ("link-mbps", "nan", ["link-mbps", "'nan'", "finite"]),
        ("link-mbps", "1e400", ["link-mbps", "finite"]),
        ("link-mbps", "10,inf", ["link-mbps", "finite"]),
        ("link-mbps", "0", ["link-mbps", "0.001"]),
        ("link-mbps", "1e-300", ["link-mbps", "0.001"]),
        ("link-mbps", "1e7", ["link-mbps", "1e+06"]),
        ("rotate-every", str(2**63), ["rotate-every", "at most"]),
        ("learning-rate", "1" + "0" * 400, ["learning-rate", "finite"]),
        ("fault-sites", "1:round=0", ["fault-sites", "round", "at least 1"]),
        ("fault-sites", "1:round=" + "9" * 30, ["fault-sites", "round"]),
    ],
)
def test_every_numeric_setting_has_finite_bounds(tmp_path, key, value, fragments):
    path = write(tmp_path, "num-sites = 3\n")
    with pytest.raises(StudyError) as info:
        Study.from_toml(path, parse_overrides([f"{key}={value}"]))
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_numeric_bounds_hold_for_toml_values_too(tmp_path):
    # a TOML integer has no size limit: an int too large for a float is not a float
    for text, key in (
        (f"learning-rate = {10**400}\n", "learning-rate"),
        (f"seed = {2**64}\n", "seed"),
        ('link-mbps = "nan,10"\n', "link-mbps"),
    ):
        with pytest.raises(StudyError, match=key):
            Study.from_toml(write(tmp_path, "num-sites = 3\n" + text))
    top = Study.from_toml(write(tmp_path, f"num-sites = 3\nseed = {2**32 - 1}\n"))
    assert top.seed == 2**32 - 1
    assert Study(link_mbps="0.001,1e6").link_speeds_mbps == (0.001, 1e6)


def test_the_largest_seed_seeds_every_consumer():
    # what the study's seed feeds: numpy generators, torch, and each site's training seed
    import numpy as np
    import torch

    from client.site import Site

    study = Study(seed=2**32 - 1, num_sites=1024, num_rounds=100_000)
    np.random.default_rng([study.seed, 31337, study.num_sites])
    torch.manual_seed(study.seed)
    site = Site.__new__(Site)
    site.study, site.site_id = study, study.num_sites - 1
    torch.Generator().manual_seed(site.train_seed(study.num_rounds))
    np.random.seed(study.seed)  # noqa: NPY002 - the legacy seeding takes < 2^32
