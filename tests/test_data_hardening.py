"""Hostile hospital exports: header bombs, FIFOs, devices, broken and escaping symlinks, crafted caches.

Every hostile file is built here in tmp_path. Anything that would allocate
gigabytes or hang if the readers regressed runs in a subprocess (`medfed data
inspect` through python -m simulations.cli, or a short load_site script)
under RLIMIT_AS = 2 GB with a timeout, never in the test process.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import pickle
import re
import resource
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from study.data import cache as data_cache
from study.data import data_report, inspect_dataset, load_site, open_dataset
from study.data.dicom import write_xray_dicom
from study.data.nih import CSV_HEADER
from study.data.phantom_mri import write_mri_phantoms
from study.data.safety import DEFAULT_MAX_IMAGE_PIXELS, file_problem, inventory
from study.data.scan import scan_to_json

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT_BYTES = 2 * 1024**3
TIMEOUT_S = 90  # generous for a loaded 2-core machine; a hang runs into it
LIMIT = str(DEFAULT_MAX_IMAGE_PIXELS)
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


# ------------------------------------------------------------------ subprocesses
def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def _run_limited(args: list[str]) -> subprocess.CompletedProcess:
    """A python subprocess under RLIMIT_AS = 2 GB; a hang fails the test at TIMEOUT_S."""
    try:
        return subprocess.run(
            [sys.executable, *args],
            cwd=REPO,
            preexec_fn=_limit_memory,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[:4]} did not finish within {TIMEOUT_S} s (a hang)")


def _inspect_limited(root: Path, *extra: str) -> dict:
    """`medfed data inspect ROOT --json` under the memory limit; its JSON object."""
    done = _run_limited(["-m", "simulations.cli", "data", "inspect", str(root), "--json", *extra])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


LOAD_SCRIPT = """
import json, sys, warnings
warnings.simplefilter("error", RuntimeWarning)  # a record that fails to decode warns: fail
from study.data import load_holdout, load_site
root, modality, cache = sys.argv[1:4]
out = {}
for attempt in ("cold", "warm"):  # the second run reads the scan and tensor caches
    shard = load_site(root, modality, image_size=16, partition_id=0, num_partitions=1,
                      test_fraction=0.0, cache_dir=cache + "/site")
    held = load_holdout(root, modality, image_size=16, cache_dir=cache + "/server")
    out[attempt] = {"site": sorted(set(shard.train.patient_ids)),
                    "holdout": sorted(set(held.patient_ids)), "images": len(shard.train)}
print(json.dumps(out))
"""


def _load_limited(root: Path, modality: str, cache_dir: Path) -> dict:
    """load_site + load_holdout (cold, then from the caches) under the memory limit."""
    done = _run_limited(["-c", LOAD_SCRIPT, str(root), modality, str(cache_dir)])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["cold"] == result["warm"]
    return result["cold"]


# ------------------------------------------------------------------ hostile files
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int = 65535, height: int = 65535) -> None:
    """A valid-looking 8-bit grey PNG whose IHDR claims width x height, with 1 row of IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def write_nifti_gz_bomb(path: Path, shape=(2000, 2000, 2000), vox_offset: int = 352) -> None:
    """A gzip of a bare NIfTI-1 header claiming shape int16 (no voxel data at all)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = vox_offset
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))


def _dicom_header(transfer_syntax, rows: int, cols: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "666"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    return ds


def write_dicom_bomb(path: Path, transfer_syntax=RLELossless, rows=65535, cols=65535) -> None:
    """A DICOM header claiming rows x cols with a tiny fake pixel payload (any syntax)."""
    ds = _dicom_header(transfer_syntax, rows, cols)
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = b"\0" * 64
    else:
        # an RLE frame header with two (empty) segments, or a few codestream bytes
        frame = struct.pack("<16L", 2, 64, 68, *([0] * 13)) + b"\x81\0\0\0" * 2
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)


def write_deflate_bomb(path: Path, inflated_bytes: int = 3 * 2**30) -> None:
    """A Deflated Explicit VR Little Endian file whose dataset inflates to inflated_bytes.

    The dataset is one private OB element of zeros; its deflate stream repeats
    one fully flushed block (every MiB of zeros compresses to the same bytes),
    so the ~3 MB file is made without holding the inflated bytes here.
    """
    meta = _dicom_header(DeflatedExplicitVRLittleEndian, 16, 16).file_meta
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    block_bytes = 2**20
    length = inflated_bytes - 12
    element = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, length)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = compressor.compress(element) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(block_bytes)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert block == compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    blocks = length // block_bytes - 1  # one more block was compressed by the check above
    tail = compressor.compress(bytes(length % block_bytes)) + compressor.flush()
    path.write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue() + head + block * (blocks + 1) + tail)


def _hostile_links(
    folder: Path, outside_target: Path, stem: str, suffix: str, hazards: bool = True
) -> dict[str, str]:
    """(FIFO,) dangling, looping and escaping links in folder -> {name: reason regex}."""
    expected = {}
    if hazards:
        os.mkfifo(folder / f"{stem}fifo{suffix}")
        expected[f"{stem}fifo{suffix}"] = r"FIFO.*never opened"
    os.symlink(folder / f"{stem}nowhere{suffix}", folder / f"{stem}dangling{suffix}")
    os.symlink(f"{stem}loop{suffix}", folder / f"{stem}loop{suffix}")
    os.symlink(outside_target, folder / f"{stem}outside{suffix}")
    return expected | {
        f"{stem}dangling{suffix}": r"dangling symlink",
        f"{stem}loop{suffix}": r"looping symlink",
        f"{stem}outside{suffix}": rf"symlink to {re.escape(str(outside_target.resolve()))}, outside",
    }


# ------------------------------------------------------------------ layouts with hostiles
def _grey_png(path: Path, value: int, size: int = 24) -> None:
    plane = (np.arange(size * size).reshape(size, size) + value) % 256
    Image.fromarray(plane.astype(np.uint8)).save(path)


def build_nih(root: Path, outside: Path) -> tuple[Path, set[str], dict[str, str]]:
    """NIH layout: 8 good patients and every hostile kind, all listed in the CSV."""
    images = root / "images"
    images.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    good = {str(i) for i in range(1, 9)}
    names = [f"{i:08d}_000.png" for i in range(1, 9)]
    for i, name in enumerate(names):
        _grey_png(images / name, i * 20)
    _grey_png(outside / "secret.png", 7)
    write_png_bomb(images / "90000001_000.png")
    expected = {"images/90000001_000.png": r"65535 x 65535 .*= 4294836225 pixels.*" + LIMIT}
    links = _hostile_links(images, outside / "secret.png", "9000000", ".png")
    expected |= {f"images/{name}": reason for name, reason in links.items()}
    # a symlinked archive folder (images_002/) that leads out of the data folder
    (outside / "images_002" / "images").mkdir(parents=True)
    _grey_png(outside / "images_002" / "images" / "90000009_000.png", 9)
    os.symlink(outside / "images_002", root / "images_002")
    expected["images_002/images/90000009_000.png"] = r"outside the data folder"
    listed = names + ["90000001_000.png", *links, "90000009_000.png"]
    rows = [CSV_HEADER.rstrip(",")]
    for n, name in enumerate(listed):
        patient = name[:8]
        rows.append(f"{name},{'Mass' if n % 2 else 'No Finding'},0,{patient},40,F,PA,24,24,0.1,0.1")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return root, good, expected


def _good_dicom(path: Path, patient: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    value = np.linspace(0, 1, 24 * 24).reshape(24, 24) ** (1 + seed % 3)
    write_xray_dicom(
        path, value, bits=12, patient_id=patient, uid_seed=f"{patient}-{seed}", comments="Mass"
    )


def build_dicom(
    root: Path, outside: Path, hazards: bool = True
) -> tuple[Path, set[str], dict[str, str]]:
    """A DICOM export: 8 good images, links; with hazards also bombs, a FIFO and a device.

    hazards=False leaves out what would hang or allocate gigabytes in a reader that
    regressed, for tests that scan in the test process itself.
    """
    outside.mkdir(parents=True, exist_ok=True)
    good = {str(i) for i in range(1, 9)}
    for i in range(1, 9):
        _good_dicom(root / f"site/p{i}/image.dcm", str(i), i)
    _good_dicom(outside / "secret.dcm", "99", 0)
    (outside / "elsewhere").mkdir()
    _good_dicom(outside / "elsewhere" / "x.dcm", "98", 1)
    expected: dict[str, str] = {}
    if hazards:
        bombs = root / "bombs"
        bombs.mkdir()
        write_dicom_bomb(bombs / "rle.dcm", RLELossless)
        write_dicom_bomb(bombs / "native.dcm", ExplicitVRLittleEndian)
        write_deflate_bomb(bombs / "deflate.dcm")
        claim = r"65535 x 65535 x 1 x 1 .*= 4294836225 pixels.*" + LIMIT
        expected["bombs/rle.dcm"] = claim
        expected["bombs/native.dcm"] = claim
        expected["bombs/deflate.dcm"] = rf"inflates to more than .*max-image-pixels {LIMIT}"
        os.mkfifo(root / "notes.txt")  # the FIFO: it hung inspect and every study
        expected["notes.txt"] = r"FIFO.*never opened"
        os.symlink("/dev/zero", root / "site" / "zero.dcm")
        expected["site/zero.dcm"] = r"symlink to a character device.*never opened"
    links = _hostile_links(root / "site", outside / "secret.dcm", "", ".dcm", hazards)
    expected |= {f"site/{name}": reason for name, reason in links.items()}
    os.symlink(outside / "elsewhere", root / "elsewhere")
    expected["elsewhere"] = r"symlinked folder to .*elsewhere, outside the data folder"
    return root, good, expected


def build_brats(root: Path, outside: Path) -> tuple[Path, set[str], dict[str, str]]:
    """BraTS 2021: 6 good phantom cases plus one case per hostile kind."""
    write_mri_phantoms(root, subjects=6, size=16, institutions=2, seed=0)
    outside.mkdir(parents=True, exist_ok=True)
    template = root / "BraTS2021_00000"
    good = {f"BraTS2021_0000{i}" for i in range(6)}
    shutil.copy(template / "BraTS2021_00000_t1.nii.gz", outside / "secret_t1.nii.gz")
    expected: dict[str, str] = {}

    def case(number: int, hostile: str) -> Path:
        name = f"BraTS2021_9000{number}"
        (root / name).mkdir()
        for mod in ("t1", "t1ce", "t2", "flair", "seg"):
            if mod != hostile:
                shutil.copy(
                    template / f"BraTS2021_00000_{mod}.nii.gz", root / name / f"{name}_{mod}.nii.gz"
                )
        return root / name / f"{name}_{hostile}.nii.gz"

    write_nifti_gz_bomb(case(1, "t1"))
    expected["BraTS2021_90001/BraTS2021_90001_t1.nii.gz"] = (
        r"2000 x 2000 x 2000 int16 = 8000000000 voxels.*" + LIMIT
    )
    write_nifti_gz_bomb(case(2, "t2"), shape=(16, 16, 16), vox_offset=2**31)
    expected["BraTS2021_90002/BraTS2021_90002_t2.nii.gz"] = r"voxels at byte 2147483648"
    os.mkfifo(case(3, "flair"))
    expected["BraTS2021_90003/BraTS2021_90003_flair.nii.gz"] = r"FIFO.*never opened"
    dangling = case(4, "t1ce")
    os.symlink(dangling.parent / "gone.nii.gz", dangling)
    expected["BraTS2021_90004/BraTS2021_90004_t1ce.nii.gz"] = r"dangling symlink"
    loop = case(5, "seg")
    os.symlink(loop.name, loop)
    expected["BraTS2021_90005/BraTS2021_90005_seg.nii.gz"] = r"looping symlink"
    os.symlink(outside / "secret_t1.nii.gz", case(6, "t1"))
    expected["BraTS2021_90006/BraTS2021_90006_t1.nii.gz"] = r"secret_t1.nii.gz, outside"
    return root, good, expected


BUILDERS = {
    "nih": (build_nih, "xray"),
    "dicom": (build_dicom, "xray"),
    "brats": (build_brats, "mri"),
}


# ------------------------------------------------------------------ the headline
@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_mixed_folder_inspect_lists_every_hostile_file_and_a_site_loads_only_good_ones(
    tmp_path, layout
):
    # Prepare: good files plus every hostile kind this layout can hold
    build, modality = BUILDERS[layout]
    root, good, expected = build(tmp_path / "export", tmp_path / "outside")

    # Execute: inspect (decodes every usable file) under 2 GB, then a site and the holdout
    report = _inspect_limited(root)
    loaded = _load_limited(root, modality, tmp_path / "cache")

    # Assert: every hostile entry is listed with its reason; the good files are all used
    reasons = {item["path"]: item["reason"] for item in report["skipped"]}
    for path, pattern in expected.items():
        assert path in reasons, f"{path} not reported; skipped: {sorted(reasons)}"
        assert re.search(pattern, reasons[path]), (path, reasons[path])
    assert report["subjects"] == len(good)
    assert set(loaded["site"]) | set(loaded["holdout"]) == good
    assert not set(loaded["site"]) & set(loaded["holdout"])


def test_dicom_header_bomb_is_refused_for_every_transfer_syntax(tmp_path):
    # Prepare: one claimed 65535 x 65535 image per syntax, native and compressed
    syntaxes = {
        "native": ExplicitVRLittleEndian,
        "rle": RLELossless,
        "jpeg": JPEGBaseline8Bit,
        "jpeg2000": JPEG2000Lossless,
        "jpegls": JPEGLSLossless,  # no decoder installed: the size reason still comes first
    }
    for name, syntax in syntaxes.items():
        write_dicom_bomb(tmp_path / f"{name}.dcm", syntax)
    _good_dicom(tmp_path / "good.dcm", "1", 1)

    # Execute
    report = _inspect_limited(tmp_path)

    # Assert
    reasons = {item["path"]: item["reason"] for item in report["skipped"]}
    assert report["images"] == 1
    for name in syntaxes:
        assert "65535 x 65535" in reasons[f"{name}.dcm"] and LIMIT in reasons[f"{name}.dcm"]


def test_a_legitimate_deflated_dicom_still_reads_and_its_header_is_checked():
    # Prepare: pydicom's own deflated sample (512 x 512, 8-bit)
    from pydicom.data import get_testdata_file

    from study.data.dicom import read_dicom_plane

    path = get_testdata_file("image_dfl.dcm")

    # Execute
    plane, bits, ds = read_dicom_plane(path)
    with pytest.raises(ValueError, match=r"512 x 512 x 1 x 1 .* over max-image-pixels 100 "):
        read_dicom_plane(path, max_pixels=100)

    # Assert
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert plane.shape == (512, 512) and bits == 8 and plane.max() > plane.min()


def test_the_limit_is_an_option_of_inspect_and_of_load_site(tmp_path):
    # Prepare: an NIH folder of 24 x 24 images and one 40 x 40 image
    root, good, _ = build_nih(tmp_path / "nih", tmp_path / "outside")
    _grey_png(root / "images" / "00000001_000.png", 3, size=40)

    # Execute: a limit between the two sizes
    report = _inspect_limited(root, "--max-image-pixels", "1000")
    shard = load_site(
        root,
        "xray",
        image_size=16,
        partition_id=0,
        num_partitions=1,
        test_fraction=0.0,
        max_image_pixels=1000,
    )
    held = data_report(root, "xray", None)

    # Assert: the big one is skipped with its claimed size and the limit, by both paths
    reason = {s["path"]: s["reason"] for s in report["skipped"]}["images/00000001_000.png"]
    assert "40 x 40" in reason and "1600 pixels" in reason and "max-image-pixels 1000" in reason
    assert "1" not in set(shard.train.patient_ids) and report["subjects"] == len(good) - 1
    assert held["subjects"] == len(good)  # the default limit keeps it


def test_a_png_over_pillows_own_guard_is_refused_by_pillow_when_our_limit_allows_it(tmp_path):
    # Prepare: a PNG bomb, and a limit above Pillow's decompression-bomb error threshold
    root, _, _ = build_nih(tmp_path / "nih", tmp_path / "outside")
    write_png_bomb(root / "images" / "90000001_000.png", 20000, 20000)

    # Execute
    report = _inspect_limited(root, "--max-image-pixels", str(2**40))

    # Assert
    reason = {s["path"]: s["reason"] for s in report["skipped"]}["images/90000001_000.png"]
    assert "decompression-bomb guard" in reason and "400000000 pixels" in reason


# ------------------------------------------------------------------ file rules, directly
def test_file_problem_names_each_kind_and_never_opens(tmp_path):
    # Prepare
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "plain.txt").write_text("x")
    (root / "sub" / "deep.txt").write_text("x")
    os.mkfifo(root / "pipe")
    os.symlink("plain.txt", root / "inside-link")
    os.symlink("sub", root / "inner")  # a symlinked folder that stays inside
    os.symlink(tmp_path, root / "up")  # one that leads out
    os.symlink(root, tmp_path / "root-link")  # the data folder itself given as a link
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f.txt").write_text("x")

    # Execute
    problems = {p.name: file_problem(p, root) for p in root.iterdir()}
    through_inner = file_problem(root / "inner" / "deep.txt", root)
    escaping = file_problem(root / "up" / "elsewhere" / "f.txt", root)
    back_in = file_problem(root / "up" / "root" / "plain.txt", root)  # out and in again
    via_link = file_problem(tmp_path / "root-link" / "sub" / "deep.txt", tmp_path / "root-link")
    found = inventory(root)

    # Assert
    assert problems["plain.txt"] is None and problems["inside-link"] is None
    assert problems["sub"] and "folder" in problems["sub"]
    assert "FIFO" in problems["pipe"] and "folder" in problems["up"]
    assert through_inner is None and via_link is None and back_in is None
    assert "through a symlinked folder" in escaping
    assert sorted(p.relative_to(root).as_posix() for p in found.files) == [
        "inside-link",
        "plain.txt",
        "sub/deep.txt",
    ]
    assert {s.path for s in found.skipped} == {"pipe", "up"}


def test_one_scan_decides_for_inspect_data_report_and_the_sites(tmp_path):
    # Prepare: a DICOM export with broken and escaping links (nothing that could hang here)
    root, good, expected = build_dicom(tmp_path / "export", tmp_path / "outside", hazards=False)

    # Execute
    report = inspect_dataset(root)
    study_report = data_report(root, "xray")
    shallow = data_report(root, "xray", deep=False, cache_dir=tmp_path / "c")
    _, scan = open_dataset(root, cache_dir=tmp_path / "c")  # what load_site scans (cached)

    # Assert: same shape and decisions; the cached site scan is the same scan
    assert study_report == report and list(study_report) == list(report)
    assert shallow["skipped"] == report["skipped"] and shallow["images"] == report["images"]
    assert {r.patient_id for r in scan.records} == good
    assert {s["path"] for s in report["skipped"]} == set(expected)
    assert [(s.path, s.reason) for s in scan.skipped] == [
        (s["path"], s["reason"]) for s in report["skipped"]
    ]
    with pytest.raises(ValueError, match="not mri"):
        data_report(root, "mri")


# ------------------------------------------------------------------ caches
class _Marker:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_crafted_cache_entries_are_never_executed_and_are_rebuilt(tmp_path):
    # Prepare: a folder, its scan cached, then hostile entries in the cache folder
    root, good, _ = build_nih(tmp_path / "nih", tmp_path / "outside")
    cache_dir = tmp_path / "cache"
    _, first = open_dataset(root, cache_dir=cache_dir)
    [entry] = cache_dir.glob("scan-*.json")
    marker = tmp_path / "pwned"
    entry.with_suffix(".pkl").write_bytes(pickle.dumps(_Marker(str(marker))))
    stored = json.loads(entry.read_text())
    crafted = [
        b"\x80\x04not json at all",
        json.dumps({**stored, "value": {"format": "nih-cxr14"}}).encode(),
        json.dumps(
            {
                **stored,
                "value": {
                    **stored["value"],
                    "records": [
                        {
                            **stored["value"]["records"][0],
                            "paths": [str(tmp_path / "outside" / "secret.png")],
                        }
                    ],
                },
            }
        ).encode(),
    ]
    for data in crafted:
        entry.write_bytes(data)

        # Execute
        _, again = open_dataset(root, cache_dir=cache_dir)

        # Assert: ignored, rebuilt to the real scan, nothing executed
        assert scan_to_json(again) == scan_to_json(first)
        assert json.loads(entry.read_text()) == stored
        assert not marker.exists()
    assert {r.patient_id for r in first.records} == good
    assert not list(cache_dir.glob("*.pkl"))  # legacy pickles are removed, never read


def test_crafted_npz_entries_are_rebuilt(tmp_path):
    # Prepare: an entry holding a pickled object array, one whose npy header claims 1 GB
    key = "k" * 64
    marker = tmp_path / "pwned"
    with open(tmp_path / f"images-{key[:24]}.npz", "wb") as fh:
        np.savez(fh, images=np.array([_Marker(str(marker))], dtype=object))
    lying = tmp_path / "b" / f"images-{key[:24]}.npz"
    lying.parent.mkdir()
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        member, {"descr": "|u1", "fortran_order": False, "shape": (10**9,)}
    )
    with zipfile.ZipFile(lying, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("images.npy", member.getvalue() + b"\0" * 4)

    # Execute
    first = data_cache.load_arrays(tmp_path, "images", key)
    second = data_cache.load_arrays(lying.parent, "images", key)
    data_cache.store_arrays(lying.parent, "images", key, {"images": np.arange(4, dtype=np.uint8)})
    rebuilt = data_cache.load_arrays(lying.parent, "images", key)

    # Assert
    assert first is None and second is None and not marker.exists()
    assert np.array_equal(rebuilt["images"], np.arange(4))


UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def _pickle_uses(path: Path) -> list[str]:
    """Imports of an unpickling module, and load calls that allow pickles, in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        elif isinstance(node, ast.Call):
            risky = {
                (k.arg, getattr(k.value, "value", None))
                for k in node.keywords
                if k.arg in ("allow_pickle", "weights_only")
            }
            if ("allow_pickle", True) in risky or ("weights_only", False) in risky:
                found.append(f"{path.name}:{node.lineno}: load allowing pickles")
            continue
        else:
            continue
        found += [f"{path.name}:{node.lineno}: imports {n}" for n in names if n in UNPICKLERS]
    return found


def test_nothing_in_client_loads_a_pickle(tmp_path):
    # Prepare: the packages that read files (the data library moved to study/),
    # and a file that does what must never be done
    sources = sorted(p for pkg in ("client", "study", "server") for p in (REPO / pkg).rglob("*.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport numpy as np\nnp.load('x', allow_pickle=True)\n")

    # Execute
    uses = [use for path in sources for use in _pickle_uses(path)]

    # Assert: the check finds what it looks for, and client/ has none of it
    assert len(_pickle_uses(bad)) == 2
    assert uses == []


def test_cli_default_limit_is_the_study_default(capsys):
    from simulations.cli import main
    from study.config import Study

    with pytest.raises(SystemExit):
        main(["data", "inspect", "--help"])
    help_text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert Study().max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS
    assert f"default {DEFAULT_MAX_IMAGE_PIXELS} = 2^27" in help_text


@pytest.mark.federation
def test_a_study_on_a_folder_with_hostile_files_completes_with_the_good_ones(tmp_path, monkeypatch):
    """The headline: a whole study (Flower, Ray, real training) on the mixed
    NIH folder uses the good images and records every refused file."""
    from simulations.runner import run_simulated_study
    from study.config import Study

    root, good, expected = build_nih(tmp_path / "nih", tmp_path / "outside")
    monkeypatch.setenv("MEDFED_DATA_HOME", str(tmp_path / "home"))
    study = Study(
        name="hostile",
        data_dir=str(root),
        num_sites=2,
        min_sites=1,
        num_rounds=1,
        image_size=16,
        holdout_images=4,
        share_per_round=1,
        batch_size=4,
        out_dir=str(tmp_path / "run"),
    ).replace()
    result = run_simulated_study(study)
    assert result.summary.status == "complete"
    assert all(s.ok for s in result.rounds[0].sites)
    assert 0 < sum(s.examples for s in result.rounds[0].sites) <= len(good)
    report = json.loads((tmp_path / "run" / "data-report.json").read_text())
    reasons = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    for path, pattern in expected.items():
        assert re.search(pattern, reasons[path]), (path, reasons.get(path))
