"""A hospital's site (client.site.Site) method by method, in plain Python: no federation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

import study.data as study_data
from client.site import Site, _labels_as_pixels, _pixels_as_labels, round_trip, site_dir
from encryption import get_encryptor
from simulations.identities import provision_identities
from study.config import Study
from study.protocol import KeyMessages
from study.task import build_model


def test_a_shard_larger_than_one_container_round_trips_in_parts(monkeypatch):
    import encryption.base as base
    import encryption.container as container

    monkeypatch.setattr(container, "MAX_CONTAINER_VALUES", 200)
    monkeypatch.setattr(base, "MAX_CONTAINER_VALUES", 200)
    enc = get_encryptor("aes-gcm", b"\1" * 32)
    images = np.random.default_rng(0).integers(0, 255, (10, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="in parts"):
        enc.encrypt(images, bits=8)  # one container cannot hold the shard
    restored = round_trip(enc, images, 8)
    np.testing.assert_array_equal(restored, images)


# -- Site, method by method (a small phantom study, no federation) --------------------------


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDFED_DATA_HOME", str(tmp_path_factory.mktemp("site-data")))
    yield
    mp.undo()


def small(tmp_path, **changes) -> Study:
    base = dict(
        name="site-test",
        num_sites=3,
        num_rounds=2,
        min_sites=1,
        image_size=16,
        phantom_patients=30,
        phantom_size=32,
        batch_size=16,
        share_per_round=4,
        holdout_images=8,
        exchange="consortium",
        method="aes-gcm",
        out_dir=str(tmp_path / "run"),
    )
    return Study(**{**base, **changes}).replace()


@pytest.fixture
def study(tmp_path, data_home) -> Study:
    return small(tmp_path)


@pytest.fixture
def sites(study) -> list[Site]:
    provision_identities(study)  # the identities grants = all needs
    return [Site(study, i, study.num_sites) for i in range(study.num_sites)]


def test_folder_and_name_are_the_site_s_own(study):
    site = Site(study, 2, 3)
    assert site.name == "site-2"
    assert site.folder == site_dir(study, 2) == Path(study.out_dir).absolute() / "sites" / "site-2"


def test_shard_is_the_site_s_partition_loaded_once(study):
    sites = [Site(study, i, 3) for i in range(3)]
    shards = [s.shard for s in sites]
    assert sites[0].shard is shards[0]  # loaded once
    assert all(len(s.train) > 0 for s in shards)
    patients = [set(s.train.patient_ids) | set(s.test.patient_ids) for s in shards]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert (site_dir(study, 0) / "cache").is_dir()  # decoded into the site's own folder


def test_a_partition_with_no_training_images_is_an_error_naming_the_site(study, monkeypatch):
    real = Site(study, 0, 3).shard
    empty = dataclasses.replace(
        real.train, images=real.train.images[:0], targets=real.train.targets[:0], patient_ids=()
    )
    monkeypatch.setattr(
        study_data, "load_site", lambda *a, **k: dataclasses.replace(real, train=empty)
    )
    with pytest.raises(ValueError, match="site 2: its partition holds no training images"):
        _ = Site(study, 2, 3).shard


def test_keys_live_in_the_site_folder_or_the_identity_dir(study, tmp_path):
    site = Site(study, 1, 3)
    assert site.keys is site.keys and site.keys.name == "site-1"
    assert site.keys.identity_dir == site.folder / "identity"
    elsewhere = Site(study, 1, 3, identity_dir=tmp_path / "hsm")
    assert elsewhere.keys.identity_dir == tmp_path / "hsm"
    with pytest.raises(FileNotFoundError, match="site-1: no identity at"):
        elsewhere.keys.certificate_pem()


def test_encryptor_is_made_once_per_key_version(study):
    site = Site(study, 0, 3)
    v0 = site.encryptor(0)
    assert site.encryptor(0) is v0
    v1 = site.encryptor(1)
    assert v1 is not v0 and v1.key != v0.key  # a new version, a new site key
    again = Site(study, 0, 3).encryptor(0)  # kept in the site's folder
    assert again.key == v0.key


def test_share_encrypts_this_round_s_images_and_measures_them(study):
    site = Site(study, 0, 3)
    shared = site.share(1)
    assert shared is not None and shared.count == 4
    train = site.shard.train
    idx = site._share_indices(len(train), 4, 1)
    enc = site.encryptor(study.key_version(1))
    np.testing.assert_array_equal(enc.decrypt(shared.images_ct), train.images[idx])
    assert math.isinf(shared.psnr) and shared.mse == 0.0  # aes-gcm is lossless
    assert shared.encrypt_s >= 0 and shared.decrypt_s >= 0
    assert shared.images_ct != site.share(2).images_ct  # other images next round


def test_nothing_is_shared_without_an_exchange(study):
    assert Site(study.replace(exchange="none"), 0, 3).share(1) is None
    assert Site(study.replace(share_per_round=0), 0, 3).share(1) is None


def test_share_indices_are_seeded_sorted_distinct_and_bounded(study):
    site = Site(study, 0, 3)
    a, b = site._share_indices(50, 4, 3), site._share_indices(50, 4, 3)
    np.testing.assert_array_equal(a, b)
    assert list(a) == sorted(set(a.tolist())) and len(a) == 4
    assert len(site._share_indices(3, 10, 1)) == 3  # no more than there are
    assert not np.array_equal(a, Site(study, 1, 3)._share_indices(50, 4, 3))


def test_training_set_is_the_shard_alone_without_peers(study):
    site = Site(study, 0, 3)
    data = site.training_set({})
    np.testing.assert_array_equal(data.images, site.shard.train.images)
    assert data.peer_images == {} and data.decrypt_s == 0.0


def test_training_set_decrypted_is_what_a_recipient_would_see(study):
    site = Site(study.replace(train_on="decrypted"), 0, 3)
    data = site.training_set({})
    np.testing.assert_array_equal(data.images, site.shard.train.images)  # lossless method
    assert data.decrypt_s > 0.0


def test_training_set_adds_a_peer_s_images_under_its_grant(sites):
    owner, reader = sites[0], sites[1]
    shared = owner.share(1)
    certs = {s.name: s.keys.certificate_pem() for s in sites}
    grants = owner.keys.seal_grants(0, owner.encryptor(0), {"site-1": certs["site-1"]})
    reader.keys.receive_grant("site-0", 0, grants["site-1"], certs["site-0"])
    data = reader.training_set({0: (shared.images_ct, shared.labels_ct)})
    n = len(reader.shard.train)
    assert len(data.images) == n + 4 and data.peer_images == {0: 4}
    idx = owner._share_indices(len(owner.shard.train), 4, 1)
    np.testing.assert_array_equal(data.images[n:], owner.shard.train.images[idx])
    np.testing.assert_array_equal(data.targets[n:], owner.shard.train.targets[idx])


def test_a_peer_s_images_without_a_grant_are_refused(sites):
    shared = sites[0].share(1)
    with pytest.raises(Exception, match="site-0"):
        sites[2].training_set({0: (shared.images_ct, shared.labels_ct)})


def test_a_peer_s_images_of_another_shape_are_refused(sites, study):
    # site 0 of a study with larger images shares with site 1 (same keys: same folders)
    owner = Site(study.replace(image_size=32), 0, 3)
    shared = owner.share(1)
    reader = sites[1]
    certs = {s.name: s.keys.certificate_pem() for s in sites}
    grants = owner.keys.seal_grants(0, owner.encryptor(0), {"site-1": certs["site-1"]})
    reader.keys.receive_grant("site-0", 0, grants["site-1"], certs["site-0"])
    with pytest.raises(ValueError, match=r"site 1: peer 0 shared images shaped \(1, 32, 32\)"):
        reader.training_set({0: (shared.images_ct, shared.labels_ct)})


def test_train_round_trains_shares_and_seals_the_grants_asked_for(sites):
    site, study = sites[0], sites[0].study
    certs = {s.name: s.keys.certificate_pem() for s in sites}
    state = build_model(study.modality).state_dict()
    keys = KeyMessages(
        certificates={"site-1": certs["site-1"], "site-2": certs["site-2"]},
        request_version=0,
        request_grantees=("site-1", "site-2"),
    )
    update = site.train_round(state, 1, keys=keys)
    assert sorted(update.grants) == ["site-1", "site-2"]
    assert update.shared is not None and update.shared.count == 4
    assert update.train.examples == len(site.shard.train) and math.isfinite(update.train.loss)
    changed = ArrayRecord(update.model.state_dict())
    assert any(
        not np.array_equal(changed[k].numpy(), v.numpy()) for k, v in state.items()
    )  # it trained
    again = Site(study, 0, 3).train_round(state, 1)  # seeded: the same update
    for k, v in update.model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), again.model.state_dict()[k].numpy())


def test_train_round_refuses_keys_without_their_certificate(sites):
    state = build_model(sites[0].study.modality).state_dict()
    keys = KeyMessages(request_version=0, request_grantees=("site-1",))
    with pytest.raises(
        ValueError, match=r"names 'site-1' in its keys but carries no .*cert/site-1"
    ):
        sites[0].train_round(state, 1, keys=keys)
    delivered = KeyMessages(delivered={("site-2", 0): b"grant"})
    with pytest.raises(ValueError, match="carries no certificate of it"):
        sites[0].train_round(state, 1, keys=delivered)


def test_train_round_stores_the_grants_delivered(sites):
    owner, reader = sites[0], sites[1]
    certs = {s.name: s.keys.certificate_pem() for s in sites}
    grants = owner.keys.seal_grants(0, owner.encryptor(0), {"site-1": certs["site-1"]})
    keys = KeyMessages(
        delivered={("site-0", 0): grants["site-1"]}, certificates={"site-0": certs["site-0"]}
    )
    reader.train_round(build_model(owner.study.modality).state_dict(), 2, keys=keys)
    assert reader.keys.peer_encryptor("site-0", 0).key == owner.encryptor(0).key


def test_evaluate_scores_the_global_model_on_the_site_s_test_images(study):
    site = Site(study, 0, 3)
    n, scores = site.evaluate(build_model(study.modality).state_dict())
    assert n == len(site.shard.test) > 0
    assert scores and all(isinstance(v, float) for v in scores.values())


def test_evaluate_without_test_images_is_zero_and_no_scores(study):
    site = Site(study, 0, 3)
    test = site.shard.test
    empty = dataclasses.replace(
        test, images=test.images[:0], targets=test.targets[:0], patient_ids=()
    )
    site._shard = dataclasses.replace(site.shard, test=empty)
    assert site.evaluate(build_model(study.modality).state_dict()) == (0, {})


def test_evaluate_refuses_a_model_of_another_task(study):
    with pytest.raises(RuntimeError, match="state_dict"):
        Site(study, 0, 3).evaluate({"w": np.zeros(1)})


def test_train_seed_differs_by_site_round_and_study_seed(study):
    seeds = {Site(study, i, 3).train_seed(r) for i in range(3) for r in range(1, 4)}
    assert len(seeds) == 9
    assert Site(study.replace(seed=1), 0, 3).train_seed(1) != Site(study, 0, 3).train_seed(1)


@pytest.mark.parametrize(
    "targets",
    [np.array([0, 3, 1, 2]), np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]], np.float32)],
)
def test_labels_travel_as_pixels_and_back(targets):
    pixels = _labels_as_pixels(targets)
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    back = _pixels_as_labels(pixels, targets)
    np.testing.assert_array_equal(back, targets)
    assert back.dtype == targets.dtype
