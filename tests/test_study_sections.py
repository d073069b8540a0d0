"""The study in sections (study/config.py): every key belongs to one section,
the flat user-key view and the sections agree for every key, and the flat
keys, their order and the run config are what they were."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from study.config import (
    SECTIONS,
    STUDY_KEYS,
    DataSection,
    FederationSection,
    PrivacySection,
    RuntimeSection,
    Study,
    StudyError,
    section_of,
)

ROOT = Path(__file__).resolve().parents[1]
# the keys, in order, of the flat Study before it had sections
KEYS_BEFORE = [
    "name",
    "seed",
    "modality",
    "data-dir",
    "image-size",
    "phantom-patients",
    "phantom-size",
    "partition",
    "dirichlet-alpha",
    "max-slices-per-subject",
    "max-image-pixels",
    "num-sites",
    "num-rounds",
    "min-sites",
    "fraction-train",
    "strategy",
    "proximal-mu",
    "method",
    "method-epochs",
    "exchange",
    "share-per-round",
    "train-on",
    "grants",
    "rotate-every",
    "auditor",
    "dp",
    "dp-noise-multiplier",
    "dp-clipping-norm",
    "dp-delta",
    "secure-aggregation",
    "secagg-threshold",
    "secagg-clipping-range",
    "secagg-quantization-range",
    "local-epochs",
    "batch-size",
    "learning-rate",
    "num-cpus",
    "num-gpus",
    "ray-address",
    "out-dir",
    "fault-sites",
    "link-mbps",
    "holdout-images",
    "round-timeout",
    "rejoin-wait",
    "resume",
    "trust-checkpoint",
]

# a value other than the default for every key (a valid study)
CHANGED = {
    "name": "sections",
    "seed": 7,
    "modality": "mri",
    "data-dir": "/data/brats",
    "image-size": 32,
    "phantom-patients": 50,
    "phantom-size": 128,
    "partition": "label-skew",
    "dirichlet-alpha": 0.3,
    "max-slices-per-subject": 4,
    "max-image-pixels": 2**20,
    "num-sites": 5,
    "num-rounds": 6,
    "min-sites": 3,
    "fraction-train": 0.8,
    "strategy": "FedProx",
    "proximal-mu": 0.1,
    "method": "aes-gcm",
    "method-epochs": 2,
    "exchange": "archive",
    "share-per-round": 3,
    "train-on": "decrypted",
    "grants": "0->1",
    "rotate-every": 2,
    "auditor": "",
    "dp": "client-fixed",
    "dp-noise-multiplier": 0.7,
    "dp-clipping-norm": 2.0,
    "dp-delta": 1e-6,
    "secure-aggregation": "none",
    "secagg-threshold": 0.6,
    "secagg-clipping-range": 4.0,
    "secagg-quantization-range": 1024,
    "local-epochs": 2,
    "batch-size": 8,
    "learning-rate": 0.01,
    "num-cpus": 2,
    "num-gpus": 0.5,
    "ray-address": "auto",
    "out-dir": "runs/sections",
    "fault-sites": "1:round=2",
    "link-mbps": "10,100",
    "holdout-images": 64,
    "round-timeout": 60.0,
    "rejoin-wait": 5.0,
    "resume": True,
    "trust-checkpoint": True,
}


def test_the_flat_keys_and_their_order_are_unchanged():
    assert Study.keys() == KEYS_BEFORE
    assert set(CHANGED) == set(KEYS_BEFORE)


def test_every_key_is_in_exactly_one_section_in_key_order():
    in_sections = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(in_sections) == len(set(in_sections))
    assert [*STUDY_KEYS, *in_sections] == [k.replace("-", "_") for k in KEYS_BEFORE]
    for cls in SECTIONS.values():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def test_sections_and_the_flat_view_agree_for_every_key():
    study = Study.from_mapping(CHANGED)
    for key, value in CHANGED.items():
        section = section_of(key)
        attr = key.replace("-", "_")
        assert getattr(study, attr) == value, key
        if section is not None:
            assert getattr(getattr(study, section), attr) == value, key
    assert section_of("num-rounds") == "federation" and section_of("dp") == "privacy"
    assert section_of("fault-sites") == "runtime" and section_of("name") is None


def test_a_study_rebuilt_from_its_sections_is_the_same_study():
    study = Study.from_mapping(CHANGED)
    again = Study.from_sections(
        name=study.name, seed=study.seed, **{s: getattr(study, s) for s in SECTIONS}
    )
    assert again == study
    assert again.to_run_config() == study.to_run_config()
    assert Study.from_mapping(study.to_run_config()) == study  # the run config round-trips


def test_the_run_config_is_flat_kebab_case_in_key_order():
    config = Study.from_mapping(CHANGED).to_run_config()
    assert list(config) == KEYS_BEFORE
    assert config == CHANGED


def test_sections_have_the_flat_defaults():
    study = Study()
    assert study.federation == FederationSection()
    assert study.data == DataSection() and study.privacy == PrivacySection()
    assert study.runtime == RuntimeSection()
    assert (study.federation.num_rounds, study.runtime.rejoin_wait) == (3, 30.0)


def test_from_sections_validates_and_names_the_key():
    with pytest.raises(StudyError, match="num-rounds = 0 is not allowed: must be at least 1"):
        Study.from_sections(federation=FederationSection(num_rounds=0))
    with pytest.raises(StudyError, match="unknown section.*dp; the sections are data"):
        Study.from_sections(dp=PrivacySection())
    with pytest.raises(StudyError, match="section privacy must be a PrivacySection"):
        Study.from_sections(privacy=FederationSection())


def test_a_study_stays_flat_underneath_and_pickles():
    study = Study.from_mapping(CHANGED)
    assert list(vars(study)) == [k.replace("-", "_") for k in KEYS_BEFORE]
    assert Study(**vars(study)) == study  # what tests and the runner rebuild studies from
    assert pickle.loads(pickle.dumps(study)) == study
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.federation.num_rounds = 9  # a section is frozen too


def test_study_files_and_set_overrides_still_use_the_flat_keys(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('num-rounds = 4\ndp = "local-dpsgd"\n')
    study = Study.from_toml(path, {"batch-size": "4"})
    assert (study.federation.num_rounds, study.privacy.dp, study.training.batch_size) == (
        4,
        "local-dpsgd",
        4,
    )
    demo = Study.from_toml(ROOT / "simulations" / "studies" / "demo.toml")
    assert demo.encryption.method == "learned-codec-aes"
