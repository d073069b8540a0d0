"""Privacy accounting: the (epsilon, delta) a study has spent so far.

The numbers come from a maintained accountant, Opacus' RDP accountant
(Mironov 2017; Mironov, Talwar and Zhang 2019 for the subsampled Gaussian),
never from a formula of our own; the tests check them against a second,
independent one (Google's dp-accounting). What is accounted, per `dp` mode:

- `client-fixed`, `client-adaptive`, `server-fixed` (Flower's DP wrappers,
  McMahan et al. 2018): one Gaussian mechanism per round over sites. Each
  site's update is clipped to norm C and the server averages the clipped
  updates of the m sites that replied with EQUAL weights (`UNIFORM_WEIGHT`,
  server.strategy; not FedAvg's example weights), so one site moves the mean
  by at most C / m; the noise on the mean has standard deviation z * C / m
  (Flower's wrapper, told m). The noise multiplier of the release is then z
  itself. Each round records the multiplier its aggregation actually had,
  `effective_noise_multiplier` (noise / (C * the largest share one site had
  in the mean), `effective_noise_multiplier` below), and the epsilon composes
  those recorded values. No amplification by sampling: Flower samples a fixed
  number of sites without replacement from Python's `random` (seeded by the
  study), the sites learn whether they were sampled and rounds.jsonl records
  it, so the sampling is neither Poisson nor secret; every round counts as a
  full release (sampling rate 1, as Flower's own accountant requires). The
  guarantee is site-level (a whole hospital's contribution) and holds for
  everyone who sees the noised global model: the sites and the public, NOT
  the server, which sees each update before the noise is added. For
  `client-adaptive` Flower splits the budget between the update noise and the
  noisy clipped-count (Andrew et al. 2021) so that the two together equal
  one Gaussian mechanism with the nominal multiplier z. These modes need a
  strategy whose server step reads only the mean (`MEAN_STRATEGIES`).
- `local-dpsgd` (Opacus inside each site's training, Abadi et al. 2016):
  sample-level DP for one image of a site, against every observer including
  the server. Each local step is a Poisson-subsampled Gaussian with sample
  rate 1 / ceil(n / batch-size) (what Opacus' DPDataLoader uses for a site
  with n training images) and ceil(n / batch-size) steps per local epoch.
  A site may not be sampled every round; counting every round is the
  conservative bound (the server knows whom it sampled, so sampling gives no
  amplification against it).

No `dp` mode combines with `exchange = consortium` (`conflicts`): a site
would train, with its DP, on images other sites shared, so an image's
privacy cost would be spent at several sites and nothing adds those up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from study.config import Study, StudyError
from study.dp import CENTRAL_MODES, MODES, dp_mode

# CENTRAL_MODES (imported from study.dp, the registry of the dp modes): the modes
# whose noise the server adds to the mean of the sites' clipped updates
# the metric the study's strategy weights by under a central mode: 1 for every site
UNIFORM_WEIGHT = "dp-uniform-weight"
# strategies whose new global model is the mean of the sites' updates, which Flower's
# DP wrapper then noises (FedAvgM as medfed builds it: server momentum 0, learning
# rate 1). Not FedAdam, FedYogi, FedAdagrad: the wrapper noises their optimiser's
# output, whose moments hold every earlier round's un-noised mean and whose step
# divides by them, so one site moves it by far more than C / n
MEAN_STRATEGIES = ("FedAvg", "FedProx", "FedAvgM")

# Who the guarantee of each mode protects against (written beside every epsilon).
PROTECTS_AGAINST = {mode.name: mode.protects_against for mode in MODES}


@dataclass(frozen=True)
class Mechanism:
    """One composed Gaussian mechanism: `steps` uses at `sample_rate`, noise z."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    level: str  # "site": a hospital's whole contribution; "sample": one image


@dataclass(frozen=True)
class PrivacySpent:
    """(epsilon, delta) after `rounds_done` rounds, with what was accounted."""

    dp: str
    rounds_done: int
    epsilon: float  # math.inf: no guarantee (dp = none, or no noise)
    delta: float
    level: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    protects_against: str
    # the round's own aggregation (rounds.jsonl): "uniform" or "examples", and the
    # noise multiplier it had; None where not recorded (dp = none)
    aggregation_weights: str | None = None
    effective_noise_multiplier: float | None = None

    def to_json(self) -> dict:
        """JSON-safe: an infinite epsilon is written as null."""
        out = asdict(self)
        if not math.isfinite(self.epsilon):
            out["epsilon"] = None
        return out


def sites_sampled(study: Study) -> int:
    """Sites Flower trains per round: max(int(N * fraction-train), min-sites)."""
    return min(study.num_sites, max(int(study.num_sites * study.fraction_train), study.min_sites))


def local_steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps of one local epoch: ceil(n / batch-size), as study.task.train takes them."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be at least 1, got {num_examples}")
    return math.ceil(num_examples / batch_size)


def mechanism(study: Study, rounds_done: int, *, num_examples: int | None = None) -> Mechanism:
    """The mechanism of `study` composed over `rounds_done` rounds: its `dp`
    mode's `accounting` (study.dp), one of the three functions below.

    `num_examples`: the site's number of training images (needed, and only
    used, for `local-dpsgd`; pass the largest site's count for a bound on all).
    """
    if rounds_done < 0:
        raise ValueError(f"rounds_done must be 0 or more, got {rounds_done}")
    return dp_mode(study.dp).mechanism(study, rounds_done, num_examples=num_examples)


def no_mechanism(study: Study, rounds_done: int, *, num_examples: int | None = None) -> Mechanism:
    """dp = none: nothing is noised (epsilon is infinite once a round ran)."""
    return Mechanism(0.0, 1.0, rounds_done, "site")


def site_mechanism(study: Study, rounds_done: int, *, num_examples: int | None = None) -> Mechanism:
    """The central modes: one Gaussian release over sites per round, at sampling
    rate 1 (a fixed-size, seeded, recorded sample of sites: no amplification,
    module docstring)."""
    return Mechanism(study.dp_noise_multiplier, 1.0, rounds_done, "site")


def sample_mechanism(
    study: Study, rounds_done: int, *, num_examples: int | None = None
) -> Mechanism:
    """local-dpsgd: Poisson-subsampled Gaussian steps of DP-SGD on one site's images."""
    if num_examples is None:
        raise ValueError(f"dp = {study.dp}: epsilon needs the site's num_examples")
    per_epoch = local_steps_per_epoch(num_examples, study.batch_size)
    return Mechanism(
        study.dp_noise_multiplier,
        1.0 / per_epoch,
        rounds_done * study.local_epochs * per_epoch,
        "sample",
    )


def effective_noise_multiplier(
    noise_multiplier: float,
    noised_for: int,
    weights: Sequence[float],
    *,
    clipped_count_stddev: float | None = None,
) -> float:
    """The noise multiplier one aggregation actually had.

    Flower's wrappers add noise of standard deviation noise_multiplier * C /
    `noised_for` to the aggregate; with `weights` (one per averaged update) a
    site whose share of the mean is w_max moves it by up to C * w_max, so the
    release's multiplier is noise_multiplier / (noised_for * w_max): the
    nominal one for equal weights over `noised_for` sites, less for anything
    else. `clipped_count_stddev` (client-adaptive): the clipped-count noise,
    a second Gaussian release of sensitivity 1/2 per site, composed with the
    first as one mechanism (Andrew et al. 2021, as Flower splits it).
    """
    if not weights or noised_for < 1:
        raise ValueError("an aggregation needs at least one update and one site")
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"aggregation weights must be non-negative, not all 0: {weights}")
    if noise_multiplier <= 0:
        return 0.0
    share = max(weights) / sum(weights)
    z = noise_multiplier / (noised_for * share)
    if clipped_count_stddev:
        z = (z**-2 + (2 * clipped_count_stddev) ** -2) ** -0.5
    return float(z)


def conflicts(study: Study) -> list[str]:
    """Why this study's `dp` cannot be accounted as configured (empty: it can)."""
    if study.dp == "none":
        return []
    out = []
    if study.exchange == "consortium":
        out.append(
            f"dp = {study.dp} cannot be combined with exchange = consortium: sites train on "
            "the images other sites shared, so one image's privacy cost is spent at several "
            "sites and no accountant adds those up; set exchange = none or archive, or dp = none"
        )
    if study.dp in CENTRAL_MODES and study.strategy not in MEAN_STRATEGIES:
        out.append(
            f"dp = {study.dp} cannot be combined with strategy = {study.strategy}: its noise is "
            "calibrated to one site's share of the mean of the clipped updates, and "
            f"{study.strategy}'s new model is not that mean (Flower adds the noise after the "
            f"strategy's server step); use one of {', '.join(MEAN_STRATEGIES)} "
            "(or dp = local-dpsgd)"
        )
    return out


def check_privacy(study: Study, source: str = "study") -> None:
    """Raise StudyError naming the keys a study's `dp` cannot be combined with."""
    problems = conflicts(study)
    if problems:
        raise StudyError(f"{source}: " + "; ".join(problems))


def epsilon_spent(
    study: Study,
    rounds_done: int,
    *,
    num_examples: int | None = None,
    noise_multipliers: Sequence[float] | None = None,
) -> PrivacySpent:
    """The (epsilon, dp-delta) spent after `rounds_done` rounds of `study`.

    Opacus' RDPAccountant with its default orders; epsilon is 0 before the
    first round and infinite when dp = none or a noise multiplier is 0.
    `noise_multipliers`: each round's effective multiplier as recorded (one
    per round, central modes); without it every round had the study's z.
    """
    from opacus.accountants import RDPAccountant

    mech = mechanism(study, rounds_done, num_examples=num_examples)
    per_round = mech.steps // rounds_done if rounds_done else 0
    if noise_multipliers is None:
        history = [(mech.noise_multiplier, mech.sample_rate, mech.steps)]
    elif len(noise_multipliers) != rounds_done:
        raise ValueError(f"{len(noise_multipliers)} noise multipliers for {rounds_done} rounds")
    else:
        history = [(float(z), mech.sample_rate, per_round) for z in noise_multipliers]
    if study.dp == "none" or any(z <= 0 for z, _, _ in history):
        epsilon = 0.0 if rounds_done == 0 else math.inf
    elif mech.steps == 0:
        epsilon = 0.0
    else:
        accountant = RDPAccountant()
        accountant.history = history
        epsilon = float(accountant.get_epsilon(delta=study.dp_delta))
    return PrivacySpent(
        dp=study.dp,
        rounds_done=rounds_done,
        epsilon=epsilon,
        delta=study.dp_delta,
        level=mech.level,
        noise_multiplier=mech.noise_multiplier,
        sample_rate=mech.sample_rate,
        steps=mech.steps,
        accountant="opacus-rdp",
        protects_against=PROTECTS_AGAINST[study.dp],
    )
