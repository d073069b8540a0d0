"""Privacy accounting: the (epsilon, delta) a study has spent so far.

The numbers come from a maintained accountant, Opacus' RDP accountant
(Mironov 2017; Mironov, Talwar and Zhang 2019 for the subsampled Gaussian),
never from a formula of our own. What is accounted, per `dp` mode:

- `client-fixed`, `client-adaptive`, `server-fixed` (Flower's DP wrappers,
  McMahan et al. 2018): one subsampled Gaussian mechanism per round over
  sites. The sensitivity of the sum of clipped updates is the clipping norm C,
  the noise on the sum has standard deviation z * C, the sampling rate is the
  share of sites trained per round (Flower samples max(int(N * fraction-train),
  min-sites) of the N sites). The guarantee is site-level (a whole hospital's
  contribution) and holds for everyone who sees the noised global model: the
  sites and the public, NOT the server, which sees each update before the
  noise is added. For `client-adaptive` Flower splits the budget between the
  update noise and the noisy clipped-count (Andrew et al. 2021), so that the
  two together equal one Gaussian mechanism with the nominal multiplier z:
  that z is what is accounted. Flower samples a fixed number of sites without
  replacement; the accountant assumes Poisson sampling with the same rate,
  the usual approximation of DP-FedAvg.
- `local-dpsgd` (Opacus inside each site's training, Abadi et al. 2016):
  sample-level DP for one image of a site, against every observer including
  the server. Each local step is a Poisson-subsampled Gaussian with sample
  rate 1 / ceil(n / batch-size) (what Opacus' DPDataLoader uses for a site
  with n training images) and ceil(n / batch-size) steps per local epoch.
  A site may not be sampled every round; counting every round is the
  conservative bound (the server knows whom it sampled, so sampling gives no
  amplification against it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from study.config import Study

# Who the guarantee of each mode protects against (written beside every epsilon).
PROTECTS_AGAINST = {
    "none": "nobody",
    "client-fixed": "holders of the global model (sites, the public); not the server",
    "client-adaptive": "holders of the global model (sites, the public); not the server",
    "server-fixed": "holders of the global model (sites, the public); not the server",
    "local-dpsgd": "everyone who sees a site's update, the server included",
}


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
    """The mechanism of `study` composed over `rounds_done` rounds.

    `num_examples`: the site's number of training images (needed, and only
    used, for `local-dpsgd`; pass the largest site's count for a bound on all).
    """
    if rounds_done < 0:
        raise ValueError(f"rounds_done must be 0 or more, got {rounds_done}")
    z = study.dp_noise_multiplier
    if study.dp == "local-dpsgd":
        if num_examples is None:
            raise ValueError("dp = local-dpsgd: epsilon needs the site's num_examples")
        per_epoch = local_steps_per_epoch(num_examples, study.batch_size)
        return Mechanism(z, 1.0 / per_epoch, rounds_done * study.local_epochs * per_epoch, "sample")
    if study.dp == "none":
        return Mechanism(0.0, 1.0, rounds_done, "site")
    return Mechanism(z, sites_sampled(study) / study.num_sites, rounds_done, "site")


def epsilon_spent(
    study: Study, rounds_done: int, *, num_examples: int | None = None
) -> PrivacySpent:
    """The (epsilon, dp-delta) spent after `rounds_done` rounds of `study`.

    Opacus' RDPAccountant with its default orders; epsilon is 0 before the
    first round and infinite when dp = none or the noise multiplier is 0.
    """
    from opacus.accountants import RDPAccountant

    mech = mechanism(study, rounds_done, num_examples=num_examples)
    if study.dp == "none" or mech.noise_multiplier == 0:
        epsilon = 0.0 if rounds_done == 0 else math.inf
    elif mech.steps == 0:
        epsilon = 0.0
    else:
        accountant = RDPAccountant()
        accountant.history = [(mech.noise_multiplier, mech.sample_rate, mech.steps)]
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
