"""The privacy columns of a sweep row: what leaks from a study's two outputs.

A site sends two things: a model update every round, and (exchange archive
or consortium) encrypted images. After a sweep point's study has run,
`probe_study` attacks both as they were configured in that study:

- update inversion (`privacy.attack`): the optimisation attack on the
  update of one site training on one image in round 1 (the worst case for
  the site; `medfed attack updates` measures batches and later rounds) under
  the study's `dp` defence, as the server sees it. Under `secure-aggregation =
  secagg+` the server sees only the sum of the sampled sites' updates, which
  `attack_secure_sum` attacks instead.
- known-plaintext attack on the ciphertext (`encryption.attacks`): the
  attacker holds pairs of site 0's images and its cipher views under the key
  the study made (the site's own fitted encryptor from its state folder) and
  reconstructs that site's other images. Not applicable when no image leaves
  a site (exchange = none): the column is then empty.

Both are scored in PSNR next to the mean guess of the same images, so a
defence that works shows a gain near 0 dB.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from study.config import Study, StudyError

PROBE_KEYS = {
    "update-attack": bool,
    "kpa": bool,
    "attack-iterations": int,
    "attack-restarts": int,
    "kpa-seconds": float,
    "kpa-pairs": int,
}
COLUMNS = (
    "update_psnr",
    "update_mean_guess_psnr",
    "update_gain_db",
    "kpa_psnr",
    "kpa_mean_guess_psnr",
)


@dataclass(frozen=True)
class PrivacyProbe:
    """The `[privacy]` table of a sweep file."""

    update_attack: bool = True
    kpa: bool = True
    attack_iterations: int = 100
    attack_restarts: int = 2
    kpa_seconds: float = 20.0
    kpa_pairs: int = 48

    @classmethod
    def from_table(cls, table: dict[str, Any], source: str) -> PrivacyProbe:
        unknown = set(table) - set(PROBE_KEYS)
        if unknown:
            raise StudyError(
                f"{source}: unknown key(s) in [privacy]: {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(PROBE_KEYS))}"
            )
        values = {}
        for key, value in table.items():
            kind = PROBE_KEYS[key]
            ok = (
                isinstance(value, bool)
                if kind is bool
                else (isinstance(value, (int, float)) and not isinstance(value, bool))
            )
            if not ok or (kind is int and not float(value).is_integer()):
                raise StudyError(f"{source}: privacy.{key} must be {kind.__name__}, got {value!r}")
            if kind is not bool and not (math.isfinite(value) and value > 0):
                raise StudyError(f"{source}: privacy.{key} must be positive, got {value!r}")
            values[key.replace("-", "_")] = kind(value)
        probe = cls(**values)
        if probe.kpa_pairs < 3:
            raise StudyError(f"{source}: privacy.kpa-pairs must be at least 3")
        return probe


def probe_study(
    study: Study, probe: PrivacyProbe, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """The privacy columns of one finished study (NaN where not applicable);
    details go to <out-dir>/privacy/."""
    out = Path(study.out_dir) / "privacy"
    row: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
    if probe.update_attack:
        row.update(_update_columns(study, probe, out, say))
    if probe.kpa and study.exchange != "none":
        row.update(_kpa_columns(study, probe, say))
    return row


def _update_columns(study: Study, probe: PrivacyProbe, out: Path, say) -> dict[str, float]:
    import numpy as np

    from privacy.attack import AttackPlan
    from privacy.updates import InversionConfig
    from simulations.attack import attack_secure_sum, run_attacks

    inversion = replace(
        InversionConfig(), iterations=probe.attack_iterations, restarts=probe.attack_restarts
    )
    plan = AttackPlan(
        study=study,
        out_dir=out,
        defenses=(study.dp,),
        attacks=("optimisation",),
        inversion=inversion,
    )
    if study.secure_aggregation == "secagg+":
        entry = attack_secure_sum(plan, say)
    else:
        doc = run_attacks(plan, say, draw=False)
        entry = next(a for a in doc["attacks"] if a["observer"] == "server")
    psnr = float(np.mean(entry["psnr"]))
    return {
        "update_psnr": psnr,
        "update_mean_guess_psnr": entry["mean_guess_psnr"],
        "update_gain_db": psnr - entry["mean_guess_psnr"],
    }


def _kpa_columns(study: Study, probe: PrivacyProbe, say) -> dict[str, float]:
    from client.site import Site
    from encryption.attacks import known_plaintext_attack

    site = Site(study, 0, study.num_sites)
    train = site.shard.train
    enc = site.encryptor()  # the key bundle the study made (fitted once per study)
    images = train.images
    if len(images) < 4:
        raise ValueError(
            f"site 0 holds {len(images)} training images: the known-plaintext attack needs 4"
        )
    pairs = min(probe.kpa_pairs, (3 * len(images)) // 4)
    leaked, unseen = images[:pairs], images[pairs : pairs + 64]
    kpa = known_plaintext_attack(
        leaked,
        enc.cipher_image(enc.encrypt(leaked, train.bits)),
        unseen,
        enc.cipher_image(enc.encrypt(unseen, train.bits)),
        train.bits,
        seconds=probe.kpa_seconds,
    )
    say(
        f"known-plaintext attack on {study.method}: {kpa.kpa_psnr:.1f} dB "
        f"(mean guess {kpa.mean_guess_psnr:.1f} dB; {pairs} pairs)"
    )
    return {"kpa_psnr": kpa.kpa_psnr, "kpa_mean_guess_psnr": kpa.mean_guess_psnr}
