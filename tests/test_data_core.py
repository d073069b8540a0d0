"""Core data API on x-ray phantoms: ensure_dataset, load_site, load_holdout, caches."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from study.data import FINDINGS, ImageSet, SiteShard, ensure_dataset, load_holdout, load_site
from study.data.nih import NihReader, find_csv
from study.data.partition import SCHEMES, partition_patients


@pytest.fixture(scope="module")
def xray_root(tmp_path_factory) -> Path:
    cache_root = tmp_path_factory.mktemp("cache")
    return ensure_dataset(
        "xray", None, cache_root=cache_root, patients=40, institutions=4, size=64, seed=3
    )


def test_ensure_dataset_returns_given_folder_and_rejects_missing(tmp_path):
    assert ensure_dataset("xray", tmp_path, cache_root=tmp_path / "c") == tmp_path
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        ensure_dataset("xray", tmp_path / "does-not-exist", cache_root=tmp_path / "c")
    with pytest.raises(ValueError, match="modality"):
        ensure_dataset("ct", None, cache_root=tmp_path)


def test_phantoms_are_deterministic_for_a_seed(tmp_path):
    a = ensure_dataset("xray", None, cache_root=tmp_path / "a", patients=6, size=32, seed=1)
    b = ensure_dataset("xray", None, cache_root=tmp_path / "b", patients=6, size=32, seed=1)
    c = ensure_dataset("xray", None, cache_root=tmp_path / "c", patients=6, size=32, seed=2)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert find_csv(a).read_bytes() != find_csv(c).read_bytes()  # v2020 name for NIH metadata


def _ensure_worker(cache_root: str, queue) -> None:
    path = ensure_dataset("xray", None, cache_root=cache_root, patients=8, size=32, seed=5)
    queue.put(str(path))


def test_ensure_dataset_is_safe_for_concurrent_callers(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ensure_worker, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1 and all(p.exitcode == 0 for p in procs)
    phantoms = [p for p in (tmp_path / "phantoms").iterdir() if not p.name.endswith(".lock")]
    assert [p.name for p in phantoms] == [Path(paths.pop()).name]  # no temp dirs left behind


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sites_are_disjoint_and_exclude_the_holdout(xray_root, scheme):
    shards = [
        load_site(
            xray_root,
            "xray",
            image_size=32,
            partition_id=i,
            num_partitions=3,
            scheme=scheme,
            seed=0,
        )
        for i in range(3)
    ]
    holdout = load_holdout(xray_root, "xray", image_size=32)
    seen: set[str] = set()
    for shard in shards:
        assert isinstance(shard, SiteShard)
        pats = set(shard.train.patient_ids) | set(shard.test.patient_ids)
        assert not set(shard.train.patient_ids) & set(shard.test.patient_ids)
        assert pats and not pats & seen
        seen |= pats
    assert len(holdout) > 0 and not set(holdout.patient_ids) & seen


def test_site_shapes_dtypes_and_targets(xray_root):
    shard = load_site(xray_root, "xray", image_size=32, partition_id=1, num_partitions=2)
    train = shard.train
    assert isinstance(train, ImageSet) and train.modality == "xray"
    assert (
        train.images.shape[1:] == (1, 32, 32) and train.images.dtype == np.uint8 and train.bits == 8
    )
    assert train.targets.shape == (len(train), len(FINDINGS)) and train.targets.dtype == np.float32
    assert len(train.patient_ids) == len(train)
    assert set(np.unique(train.targets)) <= {0.0, 1.0}


def test_same_seed_same_partition_other_seed_differs(xray_root):
    def pats(seed):
        shard = load_site(
            xray_root, "xray", image_size=16, partition_id=0, num_partitions=2, seed=seed
        )
        return shard.train.patient_ids

    assert pats(0) == pats(0)
    assert pats(0) != pats(1)


def test_natural_partition_follows_institutions(xray_root):
    csv_rows = (xray_root / "partitioning.csv").read_text().splitlines()[1:]
    site_of = {row.split(",")[1]: row.split(",")[0] for row in csv_rows}
    for i in range(4):
        shard = load_site(
            xray_root, "xray", image_size=16, partition_id=i, num_partitions=4, scheme="natural"
        )
        institutions = {site_of[p] for p in shard.train.patient_ids + shard.test.patient_ids}
        assert institutions == {str(i + 1)}


def test_partition_schemes_cover_every_patient_once():
    patients = [f"p{i}" for i in range(50)]
    classes = {p: ("A", "B", "C")[i % 3] for i, p in enumerate(patients)}
    for scheme in ("iid", "label-skew", "quantity-skew"):
        parts = partition_patients(patients, 4, scheme, seed=2, alpha=0.3, patient_class=classes)
        flat = [p for part in parts for p in part]
        assert sorted(flat) == sorted(patients) and all(parts)
    with pytest.raises(ValueError, match="valid: iid"):
        partition_patients(patients, 2, "by-moon")
    with pytest.raises(ValueError, match="institution"):
        partition_patients(patients, 2, "natural", patient_site={})


def test_site_cache_is_used_and_invalidated_by_a_changed_file(xray_root, tmp_path, monkeypatch):
    kwargs = dict(image_size=24, partition_id=0, num_partitions=2, cache_dir=tmp_path)
    first = load_site(xray_root, "xray", **kwargs)

    def no_decode(*args, **kw):
        raise AssertionError("decoded again")

    monkeypatch.setattr(NihReader, "load", no_decode)
    again = load_site(xray_root, "xray", **kwargs)
    assert np.array_equal(first.train.images, again.train.images)
    assert again.train.patient_ids == first.train.patient_ids
    # touch one of this site's files: the entry must be rebuilt
    name = f"{int(first.train.patient_ids[0]):08d}_000.png"
    target = xray_root / "images" / name
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(AssertionError, match="decoded again"):
        load_site(xray_root, "xray", **kwargs)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_bad_partition_arguments(xray_root):
    with pytest.raises(ValueError, match="partition_id"):
        load_site(xray_root, "xray", image_size=16, partition_id=3, num_partitions=3)
    with pytest.raises(ValueError, match="not mri"):
        load_site(xray_root, "mri", image_size=16, partition_id=0, num_partitions=1)


@pytest.mark.slow
def test_phantom_generation_is_fast(tmp_path):
    import time

    from study.data.phantom_xray import write_xray_phantoms

    start = time.perf_counter()
    write_xray_phantoms(tmp_path / "x", patients=240, size=256)
    assert time.perf_counter() - start < 60


def test_every_reader_returns_native_pixels_with_metadata(xray_root, tmp_path):
    from study.data import open_dataset
    from study.data.phantom_mri import write_mri_phantoms
    from study.data.phantom_xray import write_xray_phantoms

    dicom_root = write_xray_phantoms(tmp_path / "d", patients=2, size=40, image_format="dicom")
    mri_root = write_mri_phantoms(tmp_path / "m", subjects=1, size=24)
    for root, ndim in ((xray_root, 2), (dicom_root, 2), (mri_root, 4)):
        reader, scan = open_dataset(root)
        pixels, meta = reader.read(scan.records[0])
        assert pixels.ndim == ndim
        assert (
            meta["patient"] == scan.records[0].patient_id
            and "spacing" in meta
            and meta["bits"] >= 8
        )
    assert meta["institution"] == "1" and meta["seg"].shape == pixels.shape[1:]
