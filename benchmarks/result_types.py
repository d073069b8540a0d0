"""The typed results of every benchmark (benchmarks.document.Results): one
dataclass per benchmark, its fields the top-level keys of the `results` the
benchmark writes, in the order it writes them. The registry
(benchmarks.registry) names which benchmark has which. Below the top level the
values are the JSON the benchmark wrote; each docstring says what they hold.

Only dataclasses here (no imports of the benchmarks themselves), so that the
registry and the CLI stay cheap to import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from benchmarks.document import ABSENT, Results

Stats = dict[str, Any]  # common.summarize: median, min, max, iqr, n, values


@dataclass
class SpeedResults(Results):
    """Encryption throughput against aes-gcm in the same run; learned methods'
    FLOPs against a plain convolution. `methods`: name -> encrypt/decrypt MB/s,
    images/s and ratios (Stats), `learned`, FLOPs, conv fraction, time breakdown."""

    benchmark: ClassVar[str] = "speed"
    size: int
    images: int
    bits: int
    raw_mb: float
    device: str
    conv: dict[str, Any]
    methods: dict[str, dict[str, Any]]


@dataclass
class RateDistortionResults(Results):
    """Size against quality per source. `sources`: source -> {methods: name ->
    bpp, kB/image, PSNR, SSIM, fit s, config; evaluate: encryption.evaluate's
    document (security, attack); references_bpp; lossless_candidates_bpp;
    learned_codec_curve}, or {error} where the source is missing here."""

    benchmark: ClassVar[str] = "rate-distortion"
    size: int
    images: int
    fit_images: int
    epochs: int | None
    fit_time_limit_s: float | None
    fit_clock: str
    variants: dict[str, Any]
    sources: dict[str, dict[str, Any]]


@dataclass
class LearningCurvesResults(Results):
    """Learned methods' PSNR on fit and unseen images against training images.
    `sources`: source -> {methods: label -> {str(images): point}}."""

    benchmark: ClassVar[str] = "learning-curves"
    size: int
    sizes: list[int]
    test_images: int
    cpu_s_per_image: float
    min_cpu_s: float
    jobs: int
    torch_threads: int
    targets: dict[str, Any]
    papers: dict[str, Any]
    sources: dict[str, dict[str, Any]]


@dataclass
class LosslessCodecsResults(Results):
    """lossless-aes's codec rule and what it was read from: `sources`: source ->
    {str(size): every candidate codec's bytes and speed}, or {error}."""

    benchmark: ClassVar[str] = "lossless-codecs"
    images: int
    sizes: list[int]
    within: float
    rule: dict[str, Any]
    sources: dict[str, dict[str, Any]]


@dataclass
class DataResults(Results):
    """Decode throughput (benchmarks.data): `metrics`: name -> Stats over the
    repeats; `counts`: the non-timing numbers of the first repeat."""

    benchmark: ClassVar[str] = "data"
    metrics: dict[str, Stats]
    counts: dict[str, Any]


@dataclass
class OverheadResults(Results):
    """A Flower/Ray study against the same work in a plain PyTorch loop; rounds
    after the first (start-up) are compared. `phases`: per round, round seconds
    and the sites' summed train and encrypt seconds."""

    benchmark: ClassVar[str] = "federation-overhead"
    settings: dict[str, Any]
    federation_round_s: Stats
    plain_round_s: Stats
    ratio_after_startup: Stats
    ratio_of_medians: float
    federation_round1_s: float
    plain_round1_s: float
    startup_s: float
    federation_wall_s: float
    plain_wall_s: float
    federation_peak_rss_bytes: int
    sites_failed: int
    phases: list[dict[str, Any]]
    plain_site_train_s_sum: list[float]
    plain_torch_threads: int
    concurrent_sites: int


@dataclass
class ScalingResults(Results):
    """Wall time and peak memory of one round with many sites. `points`: per
    measured number of sites; `skipped`: sizes over the time budget;
    `linear_trend`: metric -> fit and its value at 512 sites."""

    benchmark: ClassVar[str] = "federation-scaling"
    settings: dict[str, Any]
    points: list[dict[str, Any]]
    skipped: list[Any]
    linear_trend: dict[str, Any]


@dataclass
class BandwidthResults(Results):
    """Bytes and upload time per round. `grid`: per exchange and image size,
    bytes per round by kind and seconds at each link speed."""

    benchmark: ClassVar[str] = "bandwidth"
    settings: dict[str, Any]
    grid: list[dict[str, Any]]


@dataclass(kw_only=True)
class LeakageResults(Results):
    """What the server reconstructs from one update. `modalities`: modality ->
    {study, points, per_image, epsilon_curve}; the rest is optional: the inversion
    settings, timing rows, AUROC against epsilon, pictures beside the file, and
    when parts were re-measured (`python -m benchmarks.leakage --...-only`)."""

    benchmark: ClassVar[str] = "leakage"
    inversion: dict[str, Any] = ABSENT
    modalities: dict[str, dict[str, Any]]
    timing: list[dict[str, Any]] = ABSENT
    auroc_epsilon: list[dict[str, Any]] = ABSENT
    pictures: dict[str, str] = ABSENT
    analytic_remeasured: dict[str, Any] = ABSENT
    auroc_remeasured: dict[str, Any] = ABSENT


@dataclass
class SecAggResults(Results):
    """SecAgg+ against plain FedAvg. `points`: per number of sites, round and
    train seconds, bytes per round, per-stage bytes and the accuracy gap."""

    benchmark: ClassVar[str] = "secagg"
    settings: dict[str, Any]
    points: list[dict[str, Any]]


@dataclass
class GpuResults(Results):
    """The GPU path: without CUDA only `available` (false) and `reason`; with it
    the devices and the speed and overhead results measured on them."""

    benchmark: ClassVar[str] = "gpu"
    available: bool
    reason: str = ABSENT
    devices: list[str] = ABSENT
    speed: dict[str, Any] = ABSENT
    overhead: dict[str, Any] = ABSENT


@dataclass
class DeployRoundResults(Results):
    """A deployed round against the same round simulated. `repeats`: per repeat
    the order, the runs and their comparison; `longer`: the same with longer
    local training (None where not run); `summary`: variant -> round ratio."""

    benchmark: ClassVar[str] = "deploy-round"
    study: str
    sites: int
    overrides: list[str]
    wire_objects: dict[str, int]
    repeats: list[dict[str, Any]]
    longer: dict[str, Any] | None
    summary: dict[str, Any]
    target_ratio: float
    load: dict[str, Any]
