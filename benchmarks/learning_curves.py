"""Learning curves of the learned encryptors (`medfed bench learning-curves`).

Are the learned methods measured at their best, or at the budget the other
benchmarks give them? For each image source, one site's images are split by
patient into a fit pool and unseen images (`site_images`); every learned
method variant is fitted on the first 24, 96 and 384 images of the pool
(nested), each fit under the same documented budget: the method's own epochs
and convergence criterion (`encryption.nn.Convergence`: validation hold-out,
learning-rate drops on a plateau, then a stop) and CPU seconds in proportion
to the images (at least `min_cpu_s`), which other programs' load does not
shrink. Per
fit it records the method's fit curve (PSNR on training and held-out images
at every check), why it stopped, and PSNR/SSIM and bits per pixel on the fit
images and on the unseen ones. `assess` then says per method whether more
data or more compute would still help, from those numbers only.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks.common import Progress, quiet
from benchmarks.result_types import LearningCurvesResults

# label -> registry name and options; the paper preset is the faithful (GPU-sized) one
VARIANTS: dict[str, dict[str, Any]] = {
    "deepedn": {"method": "deepedn", "config": {}},
    "deepedn (paper)": {"method": "deepedn", "config": {"preset": "paper"}},
    "aae-scramble": {"method": "aae-scramble", "config": {}},
    "learned-codec-aes": {"method": "learned-codec-aes", "config": {}},
    "invertible": {"method": "invertible", "config": {}},
}

# What each method's paper reports (from its abstract; the numbers those papers
# give are for other data, sizes and hardware, so none is compared here).
PAPERS: dict[str, str] = {
    "deepedn": "Ding et al. 2021 (IEEE IoT J.): a Cycle-GAN maps chest X-rays into a target "
    "domain and a reconstruction network restores them; evaluated on a chest X-ray data set, "
    "reported as highly secure and efficient. Bao et al. 2021 (Applied Optics) find a weak "
    "avalanche effect in Cycle-GAN encryption.",
    "deepedn (paper)": "CycleGAN's full-size networks, which those papers build on (ngf 64, "
    "9 residual blocks, PatchGAN 64), and CycleGAN's 200-epoch schedule (Zhu et al. 2017): "
    "GPU training.",
    "aae-scramble": "Bao et al. 2021 (MTAP): CycleGAN generators as encoder/decoder, a PatchGAN "
    "against uniform noise; scrambles and restores natural images of ten scene classes, "
    "and says it meets security requirements partly.",
    "learned-codec-aes": "Balle et al. 2017 (ICLR, the factorized-prior codec it follows): "
    "better rate-distortion than JPEG and JPEG 2000 on natural images; its security is "
    "AES-GCM's, not the network's.",
    "invertible": "Wang et al. 2022 (Opt. Lasers Eng.): an invertible network encrypts and "
    "exactly decrypts optical-cryptosystem images into noise-like ciphers; here exact by "
    "construction (integer coupling), so training moves only the cipher statistics.",
}

# Project targets: PSNR on unseen phantom X-rays at 64 px after fitting 384 images.
TARGETS: dict[str, float] = {"deepedn": 24.0, "aae-scramble": 25.0}
GAP_DB = 1.0  # fit minus unseen PSNR above this: the method still overfits its fit set
COMPUTE_GAIN_DB = 0.2  # held-out PSNR gain over the last quarter of a fit cut by its budget


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _fidelity(enc: Any, images: np.ndarray, bits: int) -> dict[str, float]:
    from encryption.metrics.fidelity import fidelity

    blob = enc.encrypt(images, bits)
    fid = fidelity(images, enc.decrypt(blob), bits)
    return {
        "psnr": fid["psnr"],
        "ssim": fid["ssim"],
        "bpp": 8.0 * len(blob) / images.size,
    }


def fit_point(
    label: str,
    variant: Mapping[str, Any],
    fit: np.ndarray,
    test: np.ndarray,
    bits: int,
    time_limit_s: float,
) -> dict[str, Any]:
    """One fit of one variant on `fit` with a budget of `time_limit_s` CPU seconds,
    measured on `fit` and `test`."""
    from encryption.registry import get_encryptor

    config = {**variant["config"], "time_limit_s": float(time_limit_s), "time_clock": "cpu"}
    enc = get_encryptor(variant["method"], key=bytes(range(32)), **config)
    start, cpu_start = time.perf_counter(), time.process_time()
    report = enc.fit(fit, bits)
    fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    doc = report.as_dict()
    # the pace of a full epoch, from the optimiser steps done (a fit cut by its
    # time limit may not finish one)
    steps = max([int(p.get("steps", 0)) for p in doc["curve"]] + [0])
    batch = getattr(enc, "config", {}).get("batch_size") or getattr(enc, "batch_size", 1)
    per_epoch = math.ceil(doc["budget"].get("train_images", len(fit)) / int(batch))
    cpu_per_epoch = fit_cpu_s / steps * per_epoch if steps else fit_cpu_s / max(1, doc["epochs"])
    return {
        "images": int(len(fit)),
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,
        "epochs": doc["epochs"],
        "steps": steps,
        "stopped": doc["stopped"],
        "budget": doc["budget"],
        "cpu_s_per_epoch": cpu_per_epoch,
        "fit": _fidelity(enc, fit, bits),
        "unseen": _fidelity(enc, test, bits),
        "report_metrics": doc["metrics"],
        "curve": doc["curve"],
        "config": config,
        "label": label,
    }


def _fit_task(task: tuple) -> dict[str, Any]:
    """`fit_point` of one (label, n) task; errors are recorded, not raised."""
    label, n, fit, test, bits, cap = task
    try:
        return fit_point(label, VARIANTS[label], fit, test, bits, cap)
    except Exception as exc:  # noqa: BLE001 - recorded per fit, not hidden
        return {"images": n, "label": label, "error": f"{type(exc).__name__}: {exc}"}


def _keyed_fit_task(item: tuple) -> tuple:
    key, task = item
    return key, _fit_task(task)


def _exit_on_sigterm() -> Any:
    """SIGTERM raises SystemExit here (so `finally` ends the worker processes);
    returns the previous handler, None off the main thread (nothing changed)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_learning_curves(
    *,
    sources: tuple[str, ...] = ("phantom-xray", "phantom-mri"),
    size: int = 64,
    sizes: tuple[int, ...] = (24, 96, 384),
    test_images: int = 64,
    variants: tuple[str, ...] = tuple(VARIANTS),
    cpu_s_per_image: float = 0.5,
    min_cpu_s: float = 10.0,
    jobs: int = 1,
    seed: int = 0,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Fits of every variant on nested fit sets of `sizes` images per source.

    The budget of a fit on n images is max(`min_cpu_s`, `cpu_s_per_image` x n)
    CPU seconds of its process (all its threads), for every variant alike:
    compute in proportion to the data, and a budget that other programs' load
    does not shrink. `jobs` > 1 runs the fits in that many worker processes of
    one torch thread each (small convolutions use one core better than two
    threads share it). A failing fit is recorded with its error; the others run."""
    from benchmarks.encryption import site_images

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    sizes = tuple(sorted(int(n) for n in sizes))
    out: dict[str, Any] = {}
    tasks: dict[tuple[str, str, int], tuple] = {}
    for source in sources:
        try:
            fit_pool, test, bits = site_images(source, sizes[-1], test_images, size, seed)
        except Exception as exc:  # noqa: BLE001 - a source missing here is recorded
            out[source] = {"error": f"{type(exc).__name__}: {exc}"}
            progress(f"learning-curves: {source} unavailable: {exc}")
            continue
        out[source] = {
            "shape": list(fit_pool.shape[1:]),
            "bits": bits,
            "fit_pool": int(len(fit_pool)),
            "unseen_images": int(len(test)),
            "methods": {},
        }
        for label in variants:
            for n in sizes:
                if n <= len(fit_pool):
                    cap = max(min_cpu_s, cpu_s_per_image * n)
                    tasks[(source, label, n)] = (label, n, fit_pool[:n], test, bits, cap)
    progress(f"learning-curves: {len(tasks)} fits in {max(1, jobs)} process(es)")
    results: dict[tuple[str, str, int], dict[str, Any]] = {}

    def report(key: tuple[str, str, int], point: dict[str, Any]) -> None:
        results[key] = point
        source, label, n = key
        head = f"learning-curves [{len(results)}/{len(tasks)}] {source}: {label} on {n} images"
        if "error" in point:
            progress(f"{head}: failed: {point['error']}")
            return
        progress(
            f"{head}: {point['epochs']} epochs, {point['fit_cpu_s']:.0f} CPU s "
            f"({point['stopped']}); PSNR fit {point['fit']['psnr']:.2f} dB, "
            f"unseen {point['unseen']['psnr']:.2f} dB"
        )

    if jobs > 1:
        import multiprocessing

        # spawn: no forked torch thread pools; the workers end with this process,
        # also on SIGTERM (Ctrl-C reaches them anyway)
        pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_one_thread)
        previous = _exit_on_sigterm()
        try:
            for key, point in pool.imap_unordered(_keyed_fit_task, tasks.items()):
                report(key, point)
            pool.close()
            pool.join()
        finally:
            pool.terminate()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    else:
        for key, task in tasks.items():
            report(key, _fit_task(task))
    for source, entry in out.items():
        if "error" in entry:
            continue
        for label in variants:
            points = [results[k] for k in sorted(results) if k[:2] == (source, label)]
            points.sort(key=lambda p: p["images"])
            entry["methods"][label] = {
                "method": VARIANTS[label]["method"],
                "config": VARIANTS[label]["config"],
                "points": points,
                "assessment": assess(label, points),
            }
    return {
        "size": size,
        "sizes": list(sizes),
        "test_images": test_images,
        "cpu_s_per_image": cpu_s_per_image,
        "min_cpu_s": min_cpu_s,
        "jobs": jobs,
        "torch_threads": 1 if jobs > 1 else _torch_threads(),
        "targets": TARGETS,
        "papers": {k: PAPERS[k] for k in variants},
        "sources": out,
    }


def _val_psnr(point: Mapping[str, Any]) -> list[float]:
    return [p["val_psnr_db"] for p in point.get("curve", []) if "val_psnr_db" in p]


def assess(label: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    """Would more data, or more compute, still help this method? From the points only.

    More data: at the largest fit set the method still does better on its fit
    images than on unseen ones by more than GAP_DB (it memorises rather than
    generalises; a gap near zero means more images would not help). For the
    codec, whose PSNR its residual fixes, bits per pixel play that part (unseen
    5 % larger). More compute: the largest fit was stopped by its budget (time
    limit or epochs) rather than by the convergence criterion, with its
    held-out PSNR still rising by more than COMPUTE_GAIN_DB over the last
    quarter of its checks. Exact methods have nothing to gain in fidelity."""
    ok = [p for p in points if "error" not in p]
    if not ok:
        return {"data": None, "compute": None, "why_data": "no fit", "why_compute": "no fit"}
    last = ok[-1]
    if math.isinf(last["unseen"]["psnr"]):
        why = "exact: decrypts every image bit for bit whatever the training"
        return {"data": False, "compute": False, "why_data": why, "why_compute": why}
    codec = VARIANTS.get(label, {}).get("method") == "learned-codec-aes"
    trend = ""
    if len(ok) >= 2:
        prev = ok[-2]
        key, unit = ("bpp", "bpp") if codec else ("psnr", "dB")
        trend = (
            f"; unseen {prev['unseen'][key]:.2f} -> {last['unseen'][key]:.2f} {unit} from "
            f"{prev['images']} to {last['images']} images"
        )
    if codec:
        excess = last["unseen"]["bpp"] - last["fit"]["bpp"]
        data = excess > 0.05 * last["fit"]["bpp"]
        why_data = f"unseen - fit {excess:+.2f} bpp at {last['images']} images" + trend
    else:
        gap = last["fit"]["psnr"] - last["unseen"]["psnr"]
        data = gap > GAP_DB
        why_data = f"fit - unseen {gap:+.2f} dB at {last['images']} images" + trend
    val = _val_psnr(last)
    rising = math.nan
    if len(val) >= 4:
        q = max(1, len(val) // 4)
        rising = val[-1] - max(val[:-q])
    budget_cut = last["stopped"] in ("time limit", "epochs")
    compute = budget_cut and (math.isnan(rising) or rising > COMPUTE_GAIN_DB)
    why_compute = f"{last['stopped']} after {last['epochs']} epochs, {last['fit_cpu_s']:.0f} CPU s"
    if not math.isnan(rising):
        why_compute += f"; held-out PSNR {rising:+.2f} dB over the last quarter of its checks"
    return {"data": data, "compute": compute, "why_data": why_data, "why_compute": why_compute}


def target_rows(results: LearningCurvesResults) -> list[tuple[str, float, float | None, str]]:
    """(method, target dB, measured unseen dB or None, how it was measured) of the
    targets, from the phantom X-ray fits on the largest set."""
    rows = []
    entry = results.sources.get("phantom-xray", {})
    for label, target in results.targets.items():
        points = [p for p in entry.get("methods", {}).get(label, {}).get("points", [])
                  if "error" not in p]  # fmt: skip
        if not points:
            rows.append((label, target, None, "not measured"))
            continue
        p = points[-1]
        how = (
            f"{p['images']} images, {p['epochs']} epochs, {p['fit_cpu_s']:.0f} CPU s "
            f"({p['stopped']}), {p['unseen']['bpp']:.2f} bpp"
        )
        rows.append((label, target, p["unseen"]["psnr"], how))
    return rows
