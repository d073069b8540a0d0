"""A study: one frozen, validated configuration shared by every part.

The same keys (kebab-case) appear in a study TOML file, in `--set key=value`
overrides, and in Flower's run config (`[tool.flwr.app.config]`), so the
ClientApp and ServerApp rebuild the identical Study from `context.run_config`.
Validation happens once, here, before anything runs: a bad key, type or
value raises StudyError naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from study import dp as _dp

MODALITIES = ("xray", "mri")
PARTITIONS = ("iid", "label-skew", "quantity-skew", "natural")
EXCHANGES = ("none", "archive", "consortium")
TRAIN_ON = ("plaintext", "decrypted")
# differential privacy: Flower's client- or server-side clipping wrappers, or
# sample-level DP-SGD inside each site's training (the registry: study.dp)
DP_MODES = _dp.DP_MODES
SECURE_AGGREGATION = ("none", "secagg+")
STRATEGIES = (
    "FedAvg",
    "FedProx",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "FedAvgM",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "Bulyan",
    "QFedAvg",
)


# Largest accepted values of the keys that memory or time grows with.
UPPER_BOUNDS: dict[str, float] = {
    "num-sites": 1024,
    "num-rounds": 100_000,
    "image-size": 1024,
    "phantom-patients": 100_000,
    "phantom-size": 4096,
    "max-slices-per-subject": 1000,
    "max-image-pixels": 2**31,
    "share-per-round": 10_000,
    "method-epochs": 10_000,
    "local-epochs": 1000,
    "batch-size": 65_536,
    "learning-rate": 10.0,
    "dirichlet-alpha": 1e6,
    "proximal-mu": 1e6,
    "num-cpus": 1024,
    "num-gpus": 64,
    "holdout-images": 100_000,
    "round-timeout": 7 * 24 * 3600.0,
    "rejoin-wait": 24 * 3600.0,
    "dp-noise-multiplier": 1e4,
    "dp-clipping-norm": 1e6,
    "secagg-clipping-range": 1e6,
    "secagg-quantization-range": 2**31,
    "rotate-every": 100_000,  # num-rounds' bound: rotating less often is not rotating
}
# `seed` seeds numpy (whose legacy seeding takes < 2^32) and torch, and each site's
# training seed is derived from it (seed * 100003 + round * 1009 + site < 2^63)
MAX_SEED = 2**32 - 1
# link-mbps: each hospital uplink's Mbit/s (1 kbit/s to 1 Tbit/s: upload times stay finite)
LINK_MBPS_RANGE = (0.001, 1e6)
BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class Fault:
    """Fault injection for one site (`fault-sites`)."""

    round: int | None  # None: every round
    stall_s: float = 0.0  # > 0: answer that many seconds late
    kind: str = "raise"  # raise | stall | nan (send a NaN update) | crash (the process dies)


class StudyError(ValueError):
    """A study file or override that cannot run."""


# -- the sections of a study ----------------------------------------------------------
# Each section is a frozen dataclass of the settings of one concern. A user writes
# their keys flat (kebab-case: `num-rounds`, in a study file, `--set` and Flower's run
# config); `Study` has every section's fields flat too (its user-key view,
# `study.num_rounds`), and each section as a property (`study.federation.num_rounds`).
# Field names are the keys with '-' -> '_'; the order of the sections and of their
# fields is the order of the keys (Study.keys(), config.json, the run config).


@dataclass(frozen=True)
class DataSection:
    """The images: where they come from, how large, and how they are split."""

    modality: str = "xray"
    data_dir: str = ""  # empty: phantoms are generated
    image_size: int = 64
    phantom_patients: int = 240
    phantom_size: int = 256
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    max_slices_per_subject: int = 8
    # largest image (pixels of a plane, voxels of a volume) a reader decodes;
    # checked against each file's header before anything is allocated
    max_image_pixels: int = 2**27


@dataclass(frozen=True)
class FederationSection:
    """The sites, the rounds and Flower's strategy."""

    num_sites: int = 4
    num_rounds: int = 3
    min_sites: int = 2
    fraction_train: float = 1.0
    strategy: str = "FedAvg"
    proximal_mu: float = 0.01  # FedProx only


@dataclass(frozen=True)
class EncryptionSection:
    """Encryption of the shared images, the exchange, the grants and key rotation."""

    method: str = "aes-gcm"
    method_epochs: int = 0  # 0: the method's default training length
    exchange: str = "archive"
    share_per_round: int = 8
    train_on: str = "plaintext"
    # who may decrypt whose images: "all", "none" or pairs like "0->1,0->2,2->auditor"
    grants: str = "all"
    rotate_every: int = 0  # a new site key every R rounds (0: one key for the study)
    auditor: str = ""  # the auditor's identity certificate (the reading centre), if any


@dataclass(frozen=True)
class PrivacySection:
    """Privacy of the model updates: differential privacy (study.dp) and SecAgg+."""

    dp: str = "none"
    dp_noise_multiplier: float = 1.0
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    secure_aggregation: str = "none"
    secagg_threshold: float = 0.5  # share of a site's SecAgg+ neighbours needed to unmask
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 4194304


@dataclass(frozen=True)
class TrainingSection:
    """Each site's local training."""

    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 0.001


@dataclass(frozen=True)
class RuntimeSection:
    """Where and how the study runs: resources, output, links, timeouts, fault
    injection (simulation and tests) and resuming."""

    num_cpus: int = 1
    num_gpus: float = 0.0
    ray_address: str = ""
    out_dir: str = "runs/study"
    fault_sites: str = ""  # fault injection, e.g. "2", "1:round=2", "1:round=2:stall=30"
    link_mbps: str = "10,100,1000"
    holdout_images: int = 256
    round_timeout: float = 3600.0  # seconds a round waits for replies; a silent site is failed
    # seconds a round waits, before it begins, for a study site whose hospital is not
    # connected (stopped, or restarting); after that it begins without it
    rejoin_wait: float = 30.0
    resume: bool = False  # set by `medfed run --resume`: continue from the last checkpoint
    # set by `--trust-checkpoint`: resume from a checkpoint signed by a key this operator
    # does not hold (validated, then re-signed; docs/SECURITY.md)
    trust_checkpoint: bool = False


# section name (a property of Study) -> its dataclass, in the order of the keys
SECTIONS: dict[str, type] = {
    "data": DataSection,
    "federation": FederationSection,
    "encryption": EncryptionSection,
    "privacy": PrivacySection,
    "training": TrainingSection,
    "runtime": RuntimeSection,
}
# the keys outside every section
STUDY_KEYS = ("name", "seed")


def section_of(key: str) -> str | None:
    """The section a study key (kebab-case or field name) belongs to; None for
    `name` and `seed`. KeyError for a key that is not a study key."""
    name = key.replace("-", "_")
    for section, cls in SECTIONS.items():
        if name in {f.name for f in fields(cls)}:
            return section
    if name in STUDY_KEYS:
        return None
    raise KeyError(f"{key!r} is not a study key")


def _flat_fields(cls: type) -> type:
    """Give `cls` (before @dataclass) every section's fields, flat, after its own."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    for section in SECTIONS.values():
        for f in fields(section):
            if f.name in annotations or hasattr(cls, f.name):
                raise TypeError(f"study key {f.name!r} is defined twice")
            annotations[f.name] = f.type
            setattr(cls, f.name, f.default)
    cls.__annotations__ = annotations
    return cls


def _section_property(section: str, section_cls: type) -> property:
    names = [f.name for f in fields(section_cls)]

    def get(self: Study) -> Any:
        return section_cls(**{name: getattr(self, name) for name in names})

    get.__doc__ = f"The {section} settings ({section_cls.__name__})."
    return property(get)


@dataclass(frozen=True)
@_flat_fields
class Study:
    """Every setting of a study, in sections (`study.data`, `study.federation`,
    `study.encryption`, `study.privacy`, `study.training`, `study.runtime`).

    The fields are flat, one per user key (the TOML keys with '-' -> '_'):
    `Study(num_rounds=5)` and `study.num_rounds` are the user-key view of
    `study.federation.num_rounds`. Beside the sections' fields a study has
    `name` and `seed`."""

    name: str = "demo"
    seed: int = 0

    @classmethod
    def from_sections(cls, *, name: str = "demo", seed: int = 0, **sections: Any) -> Study:
        """A validated study from section objects, e.g.
        `Study.from_sections(federation=FederationSection(num_rounds=5))`."""
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise StudyError(
                f"study: unknown section(s) {', '.join(sorted(unknown))}; "
                f"the sections are {', '.join(SECTIONS)}"
            )
        values: dict[str, Any] = {"name": name, "seed": seed}
        for section, cls_ in SECTIONS.items():
            given = sections.get(section, cls_())
            if not isinstance(given, cls_):
                raise StudyError(f"study: section {section} must be a {cls_.__name__}")
            values |= {f.name: getattr(given, f.name) for f in fields(cls_)}
        study = cls(**values)
        study.validate("study")
        return study

    # -- construction -----------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name.replace("_", "-") for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "study") -> Study:
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                close = [k for k in known if k.split("-")[0] == key.split("-")[0]]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise StudyError(
                    f"{source}: unknown key {key!r}{hint}; allowed keys: {', '.join(known)}"
                )
            field = known[key]
            kwargs[field.name] = _coerce(key, value, field.type, source)
        study = cls(**kwargs)
        study.validate(source)
        return study

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> Study:
        path = Path(path)
        if not path.is_file():
            raise StudyError(f"study file not found: {path}")
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise StudyError(f"{path}: not valid TOML: {exc}") from None
        for key, value in doc.items():
            if isinstance(value, dict):
                raise StudyError(
                    f"{path}: [{key}] tables are not used; write keys at the top level"
                )
        doc.update(overrides or {})
        return cls.from_mapping(doc, source=str(path))

    def replace(self, **changes: Any) -> Study:
        study = dataclasses.replace(self, **changes)
        study.validate("study")
        return study

    def to_run_config(self) -> dict[str, Any]:
        """Flower run config: kebab-case keys, scalar values."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    # -- validation -------------------------------------------------------
    def validate(self, source: str = "study") -> None:
        def bad(key: str, allowed: str) -> StudyError:
            value = getattr(self, key.replace("-", "_"))
            return StudyError(f"{source}: {key} = {value!r} is not allowed: {allowed}")

        choices = {
            "modality": MODALITIES,
            "partition": PARTITIONS,
            "exchange": EXCHANGES,
            "train-on": TRAIN_ON,
            "strategy": STRATEGIES,
            "dp": DP_MODES,
            "secure-aggregation": SECURE_AGGREGATION,
        }
        for key, allowed in choices.items():
            if getattr(self, key.replace("-", "_")) not in allowed:
                raise bad(key, "one of " + ", ".join(allowed))
        positive = (
            "num-sites",
            "num-rounds",
            "image-size",
            "phantom-patients",
            "phantom-size",
            "local-epochs",
            "batch-size",
            "num-cpus",
            "max-slices-per-subject",
            "holdout-images",
            "max-image-pixels",
        )
        for key in positive:
            if getattr(self, key.replace("-", "_")) < 1:
                raise bad(key, "must be at least 1")
        for key in ("share-per-round", "method-epochs", "seed", "rotate-every", "rejoin-wait"):
            if getattr(self, key.replace("-", "_")) < 0:
                raise bad(key, "must be 0 or more")
        if self.seed > MAX_SEED:
            raise bad("seed", f"0 to {MAX_SEED} (numpy and torch seeding)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise bad(f.name.replace("_", "-"), "a finite number (not NaN or infinity)")
        # memory and time grow with these: a typo must not take the machine
        for key, top in UPPER_BOUNDS.items():
            if getattr(self, key.replace("-", "_")) > top:
                raise bad(key, f"at most {top:g}")
        if self.image_size < 16 or self.image_size > 1024:
            raise bad("image-size", "16 to 1024 pixels")
        if not 1 <= self.min_sites <= self.num_sites:
            raise bad("min-sites", f"1 to num-sites ({self.num_sites})")
        if not 0.0 < self.fraction_train <= 1.0:
            raise bad("fraction-train", "in (0, 1]")
        if self.learning_rate <= 0:
            raise bad("learning-rate", "must be > 0")
        if self.dirichlet_alpha <= 0:
            raise bad("dirichlet-alpha", "must be > 0")
        if self.num_gpus < 0:
            raise bad("num-gpus", "0 or more (fractions share a GPU)")
        if self.dp_noise_multiplier < 0:
            raise bad("dp-noise-multiplier", "must be 0 or more")
        if self.dp_clipping_norm <= 0:
            raise bad("dp-clipping-norm", "must be > 0")
        if not 0 < self.dp_delta < 1:
            raise bad("dp-delta", "in (0, 1), e.g. 1e-5")
        if not 0 < self.secagg_threshold <= 1:
            raise bad("secagg-threshold", "a share of the neighbours in (0, 1]")
        if self.secagg_clipping_range <= 0:
            raise bad("secagg-clipping-range", "must be > 0")
        if self.secagg_quantization_range < 2:
            raise bad("secagg-quantization-range", "at least 2")
        if self.round_timeout <= 0:
            raise bad("round-timeout", "seconds, > 0")
        if self.proximal_mu < 0:
            raise bad("proximal-mu", "must be 0 or more")
        if not self.name or "/" in self.name:
            raise bad("name", "a non-empty name without '/'")
        _ = self.link_speeds_mbps  # parses or raises
        _ = self.fault_plan  # parses or raises
        pairs = self.grant_pairs(auditor=True)  # parses or raises
        if self.exchange == "consortium" and not any(g.startswith("site-") for _, g in pairs):
            raise bad("grants", "a consortium needs at least one site-to-site grant ('all')")
        from encryption import list_encryptors

        methods = list_encryptors()
        if self.method not in methods:
            raise bad("method", "one of " + ", ".join(methods))
        from study.privacy import check_privacy
        from study.secure_aggregation import check_secure_aggregation

        check_secure_aggregation(self, source)
        check_privacy(self, source)  # dp with consortium, or with a strategy that does not average

    # -- derived ----------------------------------------------------------
    @property
    def link_speeds_mbps(self) -> tuple[float, ...]:
        try:
            speeds = tuple(float(s) for s in self.link_mbps.split(",") if s.strip())
        except ValueError:
            raise StudyError(
                f"link-mbps = {self.link_mbps!r} is not allowed: comma-separated Mbit/s, e.g. '10,100,1000'"
            ) from None
        low, high = LINK_MBPS_RANGE
        if not speeds:
            raise StudyError(f"link-mbps = {self.link_mbps!r} is not allowed: positive speeds")
        if not all(math.isfinite(s) for s in speeds):
            raise StudyError(
                f"link-mbps = {self.link_mbps!r} is not allowed: finite speeds (not NaN or infinity)"
            )
        if not all(low <= s <= high for s in speeds):
            raise StudyError(
                f"link-mbps = {self.link_mbps!r} is not allowed: positive speeds, each {low:g} "
                f"to {high:g} Mbit/s"
            )
        return speeds

    def key_version(self, server_round: int) -> int:
        """The key version a site encrypts with in `server_round` (1-based)."""
        return (server_round - 1) // self.rotate_every if self.rotate_every else 0

    def grant_pairs(self, *, auditor: bool | None = None) -> set[tuple[int, str]]:
        """(grantor site, grantee identity) pairs of the grant policy.

        "all": under `consortium` every site grants every other site, and
        every site grants the auditor when there is one (`auditor` set, or
        `auditor=True`); "none": no grants; else explicit pairs
        "0->1,2->auditor". Sites are numbers, the auditor is "auditor". Under
        `exchange = none` nothing is shared, so nothing is granted.
        """
        has_auditor = bool(self.auditor) if auditor is None else auditor
        text = self.grants.strip()
        if self.exchange == "none" or text == "none":
            return set()
        n = self.num_sites
        if text == "all":
            pairs = set()
            if self.exchange == "consortium":
                pairs |= {(i, f"site-{j}") for i in range(n) for j in range(n) if i != j}
            if has_auditor:
                pairs |= {(i, "auditor") for i in range(n)}
            return pairs
        pairs = set()
        example = "'all', 'none' or pairs like '0->1,0->2,2->auditor'"
        for item in filter(None, (p.strip() for p in text.split(","))):
            grantor, sep, grantee = (x.strip() for x in item.partition("->"))
            try:
                if not sep:
                    raise ValueError
                i = int(grantor)
                name = grantee if grantee == "auditor" else f"site-{int(grantee)}"
            except ValueError:
                raise StudyError(f"grants = {self.grants!r} is not allowed: {example}") from None
            if not 0 <= i < n or (name != "auditor" and not 0 <= int(grantee) < n):
                raise StudyError(f"grants: {item!r} names a site outside 0..{n - 1}")
            if name == f"site-{i}":
                raise StudyError(f"grants: {item!r}: a site always reads its own images")
            pairs.add((i, name))
        return pairs

    @property
    def fault_plan(self) -> dict[int, Fault]:
        """Fault injection, e.g. "2" (site 2 fails every round), "1:round=2" (site 1
        fails in round 2), "1:round=2:stall=30" (answers round 2 30 s late),
        "1:round=2:nan" (sends a NaN model update), "1:round=2:crash" (its
        process dies, as when a worker is killed)."""
        plan: dict[int, Fault] = {}
        example = (
            "e.g. '2', '1:round=2', '1:round=2:stall=30', '1:round=2:nan' or "
            "'1:round=2:crash' (comma-separated)"
        )
        for item in filter(None, (s.strip() for s in self.fault_sites.split(","))):
            site_text, *options = item.split(":")
            try:
                site = int(site_text)
                flags = {o for o in options if "=" not in o}
                opts = dict(o.split("=", 1) for o in options if "=" in o)
                if set(opts) - {"round", "stall"} or flags - {"nan", "crash"} or len(flags) > 1:
                    raise ValueError
                rnd = int(opts["round"]) if "round" in opts else None
                stall = float(opts.get("stall", 0.0))
                kind = flags.pop() if flags else ("stall" if stall > 0 else "raise")
            except ValueError:
                raise StudyError(
                    f"fault-sites = {self.fault_sites!r} is not allowed: {example}"
                ) from None
            if not 0 <= site < self.num_sites:
                raise StudyError(f"fault-sites: site {site} is outside 0..{self.num_sites - 1}")
            if not 0 <= stall <= 3600:
                raise StudyError(f"fault-sites: stall={stall:g} must be 0 to 3600 seconds")
            if rnd is not None and not 1 <= rnd <= UPPER_BOUNDS["num-rounds"]:
                raise StudyError(
                    f"fault-sites: round={str(rnd)[:20]} must be at least 1 and at most "
                    f"{UPPER_BOUNDS['num-rounds']:g}"
                )
            plan[site] = Fault(rnd, stall, kind)
        return plan


for _section, _cls in SECTIONS.items():
    setattr(Study, _section, _section_property(_section, _cls))
del _section, _cls


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Type-check one value; accept ints for floats and strings from --set."""
    kind = {"str": str, "int": int, "float": float, "bool": bool}[str(annotation)]
    if isinstance(value, str) and kind is bool:
        if value.strip().lower() not in BOOLEAN_WORDS:
            raise StudyError(
                f"{source}: {key} = {value!r} is not a boolean: one of " + ", ".join(BOOLEAN_WORDS)
            )
        value = BOOLEAN_WORDS[value.strip().lower()]
    elif isinstance(value, str) and kind is not str:
        try:
            value = kind(value)
        except ValueError:
            raise StudyError(f"{source}: {key} = {value!r} is not a {kind.__name__}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # a TOML integer has no size limit
            raise StudyError(
                f"{source}: {key} = {str(value)[:20]}... is not allowed: a finite number"
            ) from None
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise StudyError(f"{source}: {key} = {value!r} is not allowed: a finite number")
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise StudyError(
            f"{source}: {key} = {value!r} has type {type(value).__name__}; expected {kind.__name__}"
        )
    return value


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`--set key=value` pairs -> mapping (values typed later by Study)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise StudyError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out
