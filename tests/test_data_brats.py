"""BraTS layouts: phantoms, region labels, slices, 2020 naming, nibabel samples, bad cases."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from study.data import MRI_REGIONS, inspect_dataset, load_holdout, load_site, open_dataset
from study.data.preprocess import brats_regions
from study.data.types import MRI_MODALITIES


@pytest.fixture(scope="module")
def brats_template(tmp_path_factory) -> Path:
    from study.data.phantom_mri import write_mri_phantoms

    return write_mri_phantoms(
        tmp_path_factory.mktemp("mri") / "ds", subjects=8, size=32, institutions=2, seed=1
    )


@pytest.fixture
def brats(brats_template, tmp_path) -> Path:
    return Path(shutil.copytree(brats_template, tmp_path / "ds"))


def test_region_mapping_follows_brats_rules():
    seg = np.array([0, 1, 2, 4])
    et, tc, wt = brats_regions(seg)
    assert et.tolist() == [0, 0, 0, 1]
    assert tc.tolist() == [0, 1, 0, 1]
    assert wt.tolist() == [0, 1, 1, 1]


def test_phantom_layout_is_brats_2021_with_fets_partitions(brats):
    cases = sorted(p for p in brats.iterdir() if p.is_dir())
    assert cases[0].name == "BraTS2021_00000"
    names = sorted(p.name for p in cases[0].iterdir())
    assert names == sorted(f"BraTS2021_00000_{m}.nii.gz" for m in (*MRI_MODALITIES, "seg"))
    assert (brats / "partitioning.csv").read_text().startswith("Partition_ID,Subject_ID\n")
    seg = np.asarray(nib.load(cases[0] / "BraTS2021_00000_seg.nii.gz").dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4}


def test_phantom_modalities_have_t1_t1c_t2_flair_contrast(brats):
    case = brats / "BraTS2021_00000"
    vol = {
        m: np.asarray(nib.load(case / f"BraTS2021_00000_{m}.nii.gz").dataobj, dtype=np.float64)
        for m in (*MRI_MODALITIES, "seg")
    }
    seg = vol.pop("seg")
    brain = vol["t1"] > 0
    rel = {m: v / v[brain & (seg == 0)].mean() for m, v in vol.items()}
    oedema = seg == 2
    # oedema is brightest on FLAIR and T2, not on T1
    assert rel["flair"][oedema].mean() > rel["t1"][oedema].mean()
    assert rel["t2"][oedema].mean() > rel["t1"][oedema].mean()
    if (seg == 4).any():  # the rim enhances with contrast
        assert rel["t1ce"][seg == 4].mean() > 1.3 * rel["t1"][seg == 4].mean()


def test_site_slices_shapes_and_nested_masks(brats):
    shard = load_site(
        brats, "mri", image_size=24, partition_id=0, num_partitions=2, max_slices_per_subject=5
    )
    train = shard.train
    assert train.modality == "mri" and train.images.shape[1:] == (4, 24, 24)
    assert train.images.dtype == np.uint16 and train.bits == 16
    assert train.targets.shape == (len(train), 3, 24, 24) and train.targets.dtype == np.uint8
    et, tc, wt = train.targets[:, 0], train.targets[:, 1], train.targets[:, 2]
    assert np.all(et <= tc) and np.all(tc <= wt)
    counts = {p: train.patient_ids.count(p) for p in set(train.patient_ids)}
    assert max(counts.values()) <= 5


def test_tumour_only_slices_all_hold_tumour(brats):
    shard = load_site(
        brats,
        "mri",
        image_size=24,
        partition_id=0,
        num_partitions=1,
        tumour_only=True,
        test_fraction=0.0,
    )
    assert len(shard.train) > 0
    assert all(m.any() for m in shard.train.targets[:, 2])


def test_natural_partition_from_partitioning_csv_and_holdout(brats):
    part_of = dict(
        reversed(line.split(","))
        for line in (brats / "partitioning.csv").read_text().splitlines()[1:]
    )
    holdout = set(load_holdout(brats, "mri", image_size=16).patient_ids)
    for i in range(2):
        shard = load_site(
            brats, "mri", image_size=16, partition_id=i, num_partitions=2, scheme="natural"
        )
        subjects = set(shard.train.patient_ids) | set(shard.test.patient_ids)
        assert {part_of[s] for s in subjects} == {str(i + 1)}
        assert not subjects & holdout


def test_inspect_counts_complete_cases_and_regions(brats):
    report = inspect_dataset(brats)
    assert report["format"] == "brats" and report["images"] == 8 and report["subjects"] == 8
    assert set(report["labels"]) == set(MRI_REGIONS)
    assert report["labels"]["WT"] == 8 and report["labels"]["ET"] <= report["labels"]["TC"] <= 8
    assert sum(report["partitions"].values()) == 8 and report["skipped"] == []


def test_brats_2020_layout_with_plain_nii(brats, tmp_path):
    root = tmp_path / "b2020" / "MICCAI_BraTS2020_TrainingData"
    for i, case in enumerate(sorted(p for p in brats.iterdir() if p.is_dir())[:3]):
        name = f"BraTS20_Training_{i + 1:03d}"
        (root / name).mkdir(parents=True)
        for f in case.iterdir():
            mod = f.name.split("_")[-1].split(".")[0]
            img = nib.load(f)
            nib.save(
                nib.Nifti1Image(np.asarray(img.dataobj), img.affine),
                root / name / f"{name}_{mod}.nii",
            )
    reader, scan = open_dataset(tmp_path / "b2020")  # cases one level down, as in the 2020 archive
    assert reader.format == "brats" and [r.key for r in scan.records] == [
        "BraTS20_Training_001",
        "BraTS20_Training_002",
        "BraTS20_Training_003",
    ]


def test_bad_cases_are_skipped_with_reasons(brats):
    cases = sorted(p for p in brats.iterdir() if p.is_dir())
    (cases[0] / f"{cases[0].name}_t1ce.nii.gz").unlink()  # missing modality
    small = nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4))
    nib.save(small, cases[1] / f"{cases[1].name}_t2.nii.gz")  # mismatched shape
    flair = cases[2] / f"{cases[2].name}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:200])  # truncated gzip
    t1 = cases[3] / f"{cases[3].name}_t1.nii.gz"
    t1.write_bytes(b"this is not a nifti file")  # corrupt
    raw = cases[4] / f"{cases[4].name}_t2.nii"
    img = nib.load(cases[4] / f"{cases[4].name}_t2.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), raw)
    (cases[4] / f"{cases[4].name}_t2.nii.gz").unlink()
    raw.write_bytes(raw.read_bytes()[:-500])  # truncated uncompressed .nii
    with open(brats / "partitioning.csv", "a") as fh:
        fh.write("3,BraTS2021_99999\n")
    report = inspect_dataset(brats)
    reasons = " | ".join(f"{s['path']}: {s['reason']}" for s in report["skipped"])
    assert f"{cases[0].name}: missing modality file(s): t1ce" in reasons
    assert "shapes differ" in reasons and cases[1].name in reasons
    assert flair.name in reasons and t1.name in reasons and raw.name in reasons
    assert "BraTS2021_99999" in reasons
    assert report["images"] == 3 and len(report["skipped"]) == 6
    with pytest.raises(ValueError, match="skipped"):
        inspect_dataset(brats, strict=True)


def test_validation_folder_without_any_seg_counts_cases(brats):
    for seg in brats.rglob("*_seg.nii.gz"):
        seg.unlink()
    report = inspect_dataset(brats)
    assert report["images"] == 8 and report["labels"] == {"ET": 0, "TC": 0, "WT": 0}


def test_a_case_missing_only_its_seg_is_skipped_when_others_have_one(brats):
    next(brats.rglob("*_seg.nii.gz")).unlink()
    report = inspect_dataset(brats)
    assert report["images"] == 7 and "seg" in report["skipped"][0]["reason"]


def test_nibabel_sample_volume_read_as_a_case(tmp_path):
    sample = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    case = tmp_path / "Case_001"
    case.mkdir()
    for mod in MRI_MODALITIES:
        shutil.copy(sample, case / f"Case_001_{mod}.nii")
    shard = load_site(
        tmp_path, "mri", image_size=16, partition_id=0, num_partitions=1, test_fraction=0.0
    )
    assert len(shard.train) > 0 and shard.train.images.shape[1:] == (4, 16, 16)
    assert not shard.train.targets.any()  # no seg: empty masks
    four_d = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    shutil.copy(four_d, case / "Case_001_t1.nii.gz")
    (case / "Case_001_t1.nii").unlink()
    report = inspect_dataset(tmp_path)
    assert report["images"] == 0 and "3D volume" in report["skipped"][0]["reason"]


def test_gzip_damage_in_the_data_is_caught_when_decoding(brats):
    t2 = next(brats.rglob("*_t2.nii.gz"))
    data = gzip.decompress(t2.read_bytes())
    t2.write_bytes(gzip.compress(data)[:-40])  # header intact, data cut short
    report = inspect_dataset(brats)
    assert any(t2.name in s["path"] for s in report["skipped"])
