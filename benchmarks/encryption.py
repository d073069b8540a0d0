"""Encryption benchmarks: speed against aes-gcm, learned-encryptor FLOPs against
a plain convolution, rate-distortion with lossless-codec reference lines, and
the security statistics / known-plaintext attack of encryption.evaluate."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Progress, quiet, ratio_stats, summarize, time_interleaved
from benchmarks.lossless_codecs import candidate_bpp
from study.data.sample import SOURCES, sample_images

# the rate-distortion corpora: every image source but the DICOM copy of the X-ray
# phantoms (the same pixels as phantom-xray in another container)
RATE_DISTORTION_SOURCES = tuple(s for s in SOURCES if s != "phantom-xray-dicom")
SPEED_BASELINE = "aes-gcm"


def site_images(
    source: str, n_fit: int, n_test: int, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """(fit images, unseen images, bits) of ONE site, disjoint by patient.

    Phantom sources are generated as one institution (one scanner) with enough
    patients; a dataset folder is read as it is. Patients are shuffled with
    `seed`; whole patients go to the unseen set until it holds `n_test` images,
    the rest to the fit set (at most `n_fit` of each). Two `sample_images`
    calls with different seeds would not do: they draw phantoms of two
    scanners, i.e. two sites, and from a folder they may share images. The
    package samples have no patients: their images are split in order.
    """
    import tempfile

    from study.data.api import build_imageset, open_dataset
    from study.data.base import LoadOptions

    if n_fit < 1 or n_test < 1:
        raise ValueError(f"need at least one fit and one unseen image, got {n_fit} and {n_test}")
    if source in ("pydicom-samples", "nibabel-samples"):
        images, bits = sample_images(source, n_fit + n_test, size, seed)
        if len(images) < 2:
            raise ValueError(f"{source}: {len(images)} image(s), too few to split")
        cut = min(n_test, len(images) // 2)
        return images[cut : cut + n_fit], images[:cut], bits

    def split(root: Path) -> tuple[np.ndarray, np.ndarray, int]:
        reader, scan = open_dataset(root)
        imageset = build_imageset(
            reader, list(scan.records), image_size=size, options=LoadOptions(8)
        )
        patients = np.asarray(imageset.patient_ids)
        order = np.random.default_rng([seed, 17]).permutation(np.unique(patients))
        test: list[int] = []
        fit: list[int] = []
        for patient in order:
            (test if len(test) < n_test else fit).extend(np.flatnonzero(patients == patient))
        if not fit:
            raise ValueError(
                f"{source}: {len(imageset)} images, too few for a fit and an unseen set"
            )
        images = imageset.images
        return images[np.sort(fit)[:n_fit]], images[np.sort(test)[:n_test]], imageset.bits

    if source in ("phantom-xray", "phantom-xray-dicom", "phantom-mri"):
        with tempfile.TemporaryDirectory(prefix="medfed-site-") as tmp:
            if source == "phantom-mri":  # up to 8 slices per subject
                from study.data.phantom_mri import write_mri_phantoms

                subjects = math.ceil((n_fit + n_test) / 8) + 2
                write_mri_phantoms(tmp, subjects=subjects, size=size, institutions=1, seed=seed)
            else:  # 1 to 3 images per patient, 1.75 on average
                from study.data.phantom_xray import write_xray_phantoms

                fmt = "dicom" if source.endswith("dicom") else "png"
                patients = math.ceil((n_fit + n_test) / 1.5) + 8
                write_xray_phantoms(
                    tmp, patients=patients, size=size, institutions=1, seed=seed, image_format=fmt
                )
            return split(Path(tmp))
    path = Path(source).expanduser()
    if path.is_dir():
        return split(path)
    raise ValueError(f"unknown image source {source!r}; valid: {', '.join(SOURCES)} or a folder")


def _accepts(cls: type, key: str) -> bool:
    from encryption.nn import TRAINING_DEFAULTS, TorchEncryptor

    defaults = getattr(cls, "defaults", None)
    if isinstance(defaults, dict) and key in defaults:
        return True
    if issubclass(cls, TorchEncryptor) and key in TRAINING_DEFAULTS:
        return True
    return key in inspect.signature(cls.__init__).parameters


def _make(
    name: str,
    epochs: int | None,
    device: str | None = None,
    training: dict[str, Any] | None = None,
    **config: Any,
):
    """The method with `config`; learned ones also get `epochs` and those of the
    `training` options (e.g. min_steps, time_limit_s) that the method knows."""
    from encryption.registry import encryptor_class, get_encryptor

    cls = encryptor_class(name)
    if cls.learned:
        if epochs is not None:
            config.setdefault("epochs", epochs)
        for key, value in (training or {}).items():
            if _accepts(cls, key):
                config.setdefault(key, value)
    if device is not None and _accepts(cls, "device"):
        config["device"] = device
    return get_encryptor(name, **config)


def flops_per_image(enc: Any, h: int, w: int, channels: int) -> int | None:
    """The learned encryptor's own FLOP count of one encryption (None if it has none).
    Some take `channels`, others read it from the fitted state."""
    fn = getattr(enc, "flops_per_image", None)
    if fn is None:
        return None
    if "channels" in inspect.signature(fn).parameters:
        return int(fn(h, w, channels=channels))
    return int(fn(h, w))


def conv_throughput(
    size: int = 128, batch: int = 8, channels: int = 64, repeats: int = 5, device: str = "cpu"
) -> dict[str, Any]:
    """FLOP/s of a plain `channels`-channel 3x3 convolution (inference) on
    (batch, channels, size, size): this machine's reference for learned encryptors."""
    import torch

    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(device).eval()
    x = torch.randn(batch, channels, size, size, device=device)
    flops = 2 * channels * channels * 9 * size * size * batch

    def run() -> None:
        with torch.inference_mode():
            conv(x)
        if device != "cpu":
            torch.cuda.synchronize()

    times = time_interleaved({"conv": run}, repeats, min_time_s=0.05)["conv"]
    stats = summarize(flops / t for t in times)
    return {
        "flops_per_call": flops,
        "shape": [batch, channels, size, size],
        "flops_per_s": stats,
        "device": device,
    }


def time_breakdown(fn: Callable[[], Any]) -> dict[str, float]:
    """Where one call's wall time goes, in fractions: convolutions, normalisation
    layers, other torch ops (by the torch profiler's self time of each op), and
    the rest outside torch (entropy coding, AES, numpy, Python). Explains a low
    fraction of convolution FLOP/s: only the first share does FLOPs we count."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall_us = (time.perf_counter() - start) * 1e6
    shares = {"convolution": 0.0, "normalization": 0.0, "other_torch": 0.0}
    for ev in prof.key_averages():
        name = ev.key.lower()
        kind = "convolution" if "conv" in name else "normalization" if "norm" in name else None
        shares[kind or "other_torch"] += ev.self_cpu_time_total
    torch_us = sum(shares.values())
    out = {k: v / max(wall_us, torch_us) for k, v in shares.items()}
    out["outside_torch"] = max(0.0, 1.0 - sum(out.values()))
    return out


def run_speed(
    methods: list[str],
    *,
    size: int = 128,
    images: int = 32,
    repeats: int = 5,
    fit_images: int = 4,
    fit_size: int = 32,
    fit_epochs: int = 1,
    device: str = "cpu",
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Encrypt/decrypt throughput of every method, interleaved with aes-gcm in the
    same process, at `size` x `size`; for learned methods also FLOPs per image and
    the fraction of the measured convolution FLOP/s they achieve.

    Speed does not depend on how well a learned method was trained, so each is
    fitted for `fit_epochs` epoch(s), one optimiser step at least, on `fit_images`
    images of `fit_size` px (the networks are convolutional; fidelity is measured
    by the rate-distortion benchmark)."""
    x, bits = sample_images("phantom-xray", images, size, 0)
    fit_x, _ = sample_images("phantom-xray", fit_images, fit_size, 1)
    raw_mb = x.nbytes / 1e6
    encs, blobs, fit_s = {}, {}, {}
    names = [SPEED_BASELINE, *[m for m in methods if m != SPEED_BASELINE]]
    for name in names:
        enc = _make(
            name,
            fit_epochs,
            device=device if device != "cpu" else None,
            training={"min_steps": 1},
        )
        start = time.perf_counter()
        if enc.learned:
            progress(f"speed: fitting {name} ({fit_epochs} epoch(s), {len(fit_x)} images)")
            enc.fit(fit_x)
        fit_s[name] = time.perf_counter() - start
        encs[name] = enc
        blobs[name] = enc.encrypt(x, bits)
    progress(f"speed: encrypt x{repeats}, interleaved with {SPEED_BASELINE}")
    enc_t = time_interleaved(
        {n: (lambda e=encs[n]: e.encrypt(x, bits)) for n in names}, repeats, min_time_s=0.05
    )
    progress(f"speed: decrypt x{repeats}")
    dec_t = time_interleaved(
        {n: (lambda e=encs[n], b=blobs[n]: e.decrypt(b)) for n in names}, repeats, min_time_s=0.05
    )
    conv = conv_throughput(size=size, repeats=repeats, device=device)
    conv_flops_s = conv["flops_per_s"]["median"]
    enc_ratio, dec_ratio = ratio_stats(enc_t, SPEED_BASELINE), ratio_stats(dec_t, SPEED_BASELINE)
    out: dict[str, Any] = {}
    for name in names:
        enc = encs[name]
        entry: dict[str, Any] = {
            "learned": bool(enc.learned),
            "encrypt_mb_s": summarize(raw_mb / t for t in enc_t[name]),
            "decrypt_mb_s": summarize(raw_mb / t for t in dec_t[name]),
            "encrypt_images_s": summarize(len(x) / t for t in enc_t[name]),
            "decrypt_images_s": summarize(len(x) / t for t in dec_t[name]),
            "encrypt_ratio_to_aes": enc_ratio[name],
            "decrypt_ratio_to_aes": dec_ratio[name],
            "fit_s": fit_s[name],
        }
        if enc.learned:
            flops = flops_per_image(enc, size, size, x.shape[1])
            entry["flops_per_image"] = flops
            if flops:
                achieved = [flops * len(x) / t for t in enc_t[name]]
                entry["achieved_flops_s"] = summarize(achieved)
                entry["fraction_of_conv"] = summarize(a / conv_flops_s for a in achieved)
                # images/s this machine's conv throughput would allow at 100 %
                entry["conv_ceiling_images_s"] = conv_flops_s / flops
                entry["time_breakdown"] = time_breakdown(lambda e=enc: e.encrypt(x, bits))
        out[name] = entry
    return {
        "size": size,
        "images": int(len(x)),
        "bits": bits,
        "raw_mb": raw_mb,
        "device": device,
        "conv": conv,
        "methods": out,
    }


def codec_sizes(images: np.ndarray, bits: int) -> dict[str, float]:
    """Bits per pixel of raw storage and of the lossless codecs (PNG level 9,
    JPEG-LS, reversible JPEG 2000 from imagecodecs), each plane coded alone."""
    import imagecodecs

    codecs = {
        "png": lambda a: imagecodecs.png_encode(a, level=9),
        "jpegls": lambda a: imagecodecs.jpegls_encode(a),
        "jpeg2000": lambda a: imagecodecs.jpeg2k_encode(
            a, level=0, reversible=True, bitspersample=bits
        ),
    }
    pixels = images.shape[0] * images.shape[1] * images.shape[2] * images.shape[3]
    out = {"raw": images.dtype.itemsize * 8.0}
    planes = images.reshape(-1, *images.shape[2:])
    for name, encode in codecs.items():
        try:
            total = sum(len(encode(np.ascontiguousarray(p))) for p in planes)
            out[name] = total * 8 / pixels
        except Exception:  # noqa: BLE001 - a codec missing from this build is reported as NaN
            out[name] = math.nan
    return out


def rd_point(
    name: str, images, bits, fit_images, epochs: int | None, training=None, **config
) -> dict:
    """One (bpp, PSNR, SSIM) point of method `name` on `images`."""
    from encryption.metrics.fidelity import fidelity

    enc = _make(name, epochs, training=training, **config)
    start = time.perf_counter()
    if enc.learned:
        enc.fit(fit_images)
    fit_s = time.perf_counter() - start
    blob = enc.encrypt(images, bits)
    fid = fidelity(images, enc.decrypt(blob), bits)
    pixels = images.shape[0] * images.shape[2] * images.shape[3] * images.shape[1]
    return {
        "bpp": len(blob) * 8 / pixels,
        "kb_per_image": len(blob) / len(images) / 1000,
        "psnr": fid["psnr"],
        "ssim": fid["ssim"],
        "fit_s": fit_s,
        "config": config,
    }


def run_rate_distortion(
    methods: list[str],
    *,
    sources: tuple[str, ...] = RATE_DISTORTION_SOURCES,
    security_sources: tuple[str, ...] = ("phantom-xray",),
    size: int = 64,
    images: int = 16,
    epochs: int | None = 10,
    kpa_seconds: float = 10.0,
    codec_targets: tuple[float, ...] = (),
    curve_sources: tuple[str, ...] = ("phantom-xray",),
    fit_time_limit_s: float | None = None,
    fit_clock: str = "wall",
    variants: dict[str, dict[str, Any]] | None = None,
    fit_images: int | None = None,
    variant_sources: tuple[str, ...] | None = None,
    pictures_dir: Path | None = None,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Bits per pixel, PSNR and SSIM of every method on every image source, with the
    lossless codecs and raw size as references; on `security_sources` the full
    encryption.evaluate document (security statistics, known-plaintext attack)
    and, with `pictures_dir`, the method pictures there
    (`rate-distortion-<source>.png`, see benchmarks.pictures).
    `fit_images`: learned methods fit on this many images of the same site,
    other patients than the `images` evaluated (default: as many); the attacker
    leaks as many pairs as there are evaluated images.
    `epochs`: of every learned fit; None keeps each method's default.
    `codec_targets`: extra target_psnr_db settings of learned-codec-aes (a curve on
    `curve_sources`).
    `fit_time_limit_s`: training time cap of each learned fit (methods that have one),
    in `fit_clock` seconds: "wall", or "cpu" (the process's CPU time, which other
    programs' load does not shrink).
    `variants`: label -> {"method": name, "config": {...}}, other configurations of
    a method (e.g. deepedn's faithful "paper" preset), evaluated next to the
    methods, under their label, on `variant_sources` (default: `security_sources`)."""
    from encryption.evaluate import evaluate, evaluate_method
    from encryption.registry import encryptor_class

    training: dict[str, Any] = {"time_limit_s": fit_time_limit_s} if fit_time_limit_s else {}
    if fit_time_limit_s:
        training["time_clock"] = fit_clock
    out: dict[str, Any] = {}
    variant_sources = security_sources if variant_sources is None else variant_sources
    for source in sources:
        try:
            fit_x, x, bits = site_images(source, fit_images or images, images, size, 0)
        except Exception as exc:  # noqa: BLE001 - a source missing here is recorded
            out[source] = {"error": f"{type(exc).__name__}: {exc}"}
            progress(f"rate-distortion: {source} unavailable: {exc}")
            continue
        progress(f"rate-distortion: {source}: {x.shape} {x.dtype} {bits}-bit")
        entry: dict[str, Any] = {
            "shape": list(x.shape),
            "bits": bits,
            "references_bpp": codec_sizes(x, bits),
            # lossless-aes's candidate codecs, each plane alone: its 3 % target
            "lossless_candidates_bpp": candidate_bpp(x, bits),
            "methods": {},
        }
        if source in security_sources:
            configs = {}
            for n in methods:
                cls = encryptor_class(n)
                if cls.learned:
                    configs[n] = {"epochs": epochs} if epochs is not None else {}
                    configs[n].update({k: v for k, v in training.items() if _accepts(cls, k)})
            pictures: dict[str, Any] = {}
            doc = evaluate(
                methods,
                x,
                bits,
                data=source,
                fit_images=fit_x,
                kpa_pairs=len(x),
                kpa_seconds=kpa_seconds,
                repeats=3,
                configs=configs,
                progress=lambda m, s=source: progress(f"  {s}: {m}"),
                pictures=pictures,
            )
            for label, variant in (variants or {}).items() if source in variant_sources else ():
                progress(f"  {source}: {label}")
                configs[label] = dict(variant["config"])
                doc["methods"][label] = evaluate_method(
                    variant["method"],
                    x,
                    bits,
                    fit_images=fit_x,
                    kpa_pairs=len(x),
                    kpa_seconds=kpa_seconds,
                    repeats=3,
                    config=configs[label],
                    progress=lambda m, s=source: progress(f"  {s}: {m}"),
                    pictures=pictures,
                )
            entry["evaluate"] = doc
            if pictures_dir is not None:
                from benchmarks.pictures import method_pictures

                png = method_pictures(
                    pictures,
                    bits,
                    Path(pictures_dir) / f"rate-distortion-{source}.png",
                    f"{source}, {size} px, {bits}-bit",
                )
                entry["pictures"] = png.name
            for name, m in doc["methods"].items():
                entry["methods"][name] = {
                    "bpp": m["size"]["bpp"],
                    "kb_per_image": m["size"]["bytes_per_image"] / 1000,
                    "psnr": m["fidelity"]["psnr"],
                    "ssim": m["fidelity"]["ssim"],
                    "fit_s": m["speed"]["fit_s"],
                    "config": configs.get(name, {}),
                }
        else:
            for name in methods:
                progress(f"  {source}: {name}")
                try:
                    entry["methods"][name] = rd_point(name, x, bits, fit_x, epochs, training)
                except Exception as exc:  # noqa: BLE001 - recorded per method, not hidden
                    entry["methods"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        curve = []
        if "learned-codec-aes" in methods and source in curve_sources:
            for target in codec_targets:
                progress(f"  {source}: learned-codec-aes target {target:g} dB")
                curve.append(
                    rd_point(
                        "learned-codec-aes", x, bits, fit_x, epochs, training, target_psnr_db=target
                    )
                )
        entry["learned_codec_curve"] = curve
        out[source] = entry
    return {
        "size": size,
        "images": images,
        "fit_images": fit_images or images,
        "epochs": epochs,
        "fit_time_limit_s": fit_time_limit_s,
        "fit_clock": fit_clock,
        "variants": variants or {},
        "sources": out,
    }
