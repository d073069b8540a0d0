"""What `secure-aggregation = secagg+` can be combined with, and its protocol sizes.

Flower's SecAgg+ (Bell et al. 2020, on Bonawitz et al. 2017; flwr's
`SecAggPlusWorkflow` and `secaggplus_mod`) hands the server one thing per
round: the example-weighted sum of the sampled sites' models, quantised.
Whatever needs more than that sum cannot run under it, and a study that asks
for such a combination is refused before anything starts, with the keys
named (`check_secure_aggregation`; the rules are here, in the study package,
so that `Study.validate`, the runner, `medfed deploy` and the ServerApp can
all call them):

- strategies: FedAvg, FedProx (a site-side proximal term; the server
  averages), FedAvgM, FedAdam, FedYogi and FedAdagrad (a server optimiser
  applied to the weighted mean) need only the sum. FedMedian, FedTrimmedAvg,
  Krum, MultiKrum and Bulyan rank or select individual updates, and QFedAvg
  weights each site's update by its own loss: refused.
- exchange: only `none`. Under `archive` or `consortium` every site also
  sends the server images (encrypted, but a per-site payload derived from
  the images, and the learned methods are not proven secure), which is what
  secure aggregation promises the server does not get.
- dp: `client-fixed` and `client-adaptive` (sites clip their own update,
  the server adds noise to the sum; Flower's own pairing of DP with SecAgg+)
  and `local-dpsgd` (noise inside each site's training) combine;
  `server-fixed` clips each site's update on the server, which SecAgg+ hides
  from it: refused.
- sites: at least 3 per round (`MIN_SITES`). With 2 a site learns the other's
  model from the sum and its own, and Flower derives each mask from a 32-bit
  seed (`pseudo_rand_gen` folds the 32-byte key into a uint32 for numpy's
  RandomState), so once the unmask stage has removed a site's private mask
  only one pairwise mask, 2^32 guesses, would hide its model from the
  server. With 3 or more every masked vector keeps at least two pairwise
  masks; the reconstruction threshold is held at 3 or more too, so that a
  round where fewer than 3 sites' vectors arrived halts before unmasking.
- quantisation: Flower sums in 32-bit modular arithmetic (modulus 2^32);
  each site adds at most `secagg-quantization-range` per value (and the same
  to the weight factor), so sites x range must stay below 2^32.
"""

from __future__ import annotations

from study.config import Study, StudyError

# strategies whose server step needs only the weighted mean of the sites' models
STRATEGIES = ("FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad")
EXCHANGES = ("none",)
DP_MODES = ("none", "client-fixed", "client-adaptive", "local-dpsgd")
MIN_SITES = 3
MODULUS_RANGE = 2**32  # Flower's SecAggPlusWorkflow default (`modulus_range`)


def sites_per_round(study: Study) -> int:
    """Sites Flower samples per round: max(int(N * fraction-train), min-sites), at most N."""
    from study.privacy import sites_sampled

    return sites_sampled(study)


def reconstruction_threshold(study: Study, sites: int) -> int:
    """Shares needed to unmask a site, for a round of `sites` sampled sites:
    `secagg-threshold` of them (every sampled site is every other's
    neighbour, see server.secagg), rounded, at least MIN_SITES (a round of
    fewer sampled sites does not run)."""
    return max(MIN_SITES, round(study.secagg_threshold * sites))


def quantisation_error_bound(
    examples: list[int],
    max_weight: float,
    clipping_range: float,
    quantization_range: int,
    largest_value: float,
) -> float:
    """Largest difference, per model value, between the mean Flower's SecAgg+
    unmasks and the exact example-weighted mean (FedAvg) of the same site
    models, when no weighted value was clipped.

    Flower's secaggplus_mod gives site i the weight d_i = round(r_i Q) / Q
    with r_i = n_i / max_weight (|d_i - r_i| <= 1 / 2Q), scales its model by
    d_i in float32, shifts by the clipping range c and quantises with a step
    of 2c / Q by stochastic rounding; the server sums, dequantises and
    divides by D = sum d_i. Per site the quantised value is off by less than
    one step from rounding plus at most 2.5 Q 2^-24 steps from the float32
    arithmetic before it (the scaled value, the shift and the scaling each
    round to float32). The weights' rounding moves a weighted mean by at most
    2 W sum |d_i - r_i| / D <= W n / (Q D), W the largest model value
    (`largest_value`). The mean then passes through float32 twice (the cast
    to the model's dtype and the study strategy's FedAvg over identical
    copies): (2n + 1) 2^-23 W.
    """
    n = len(examples)
    q, c = float(quantization_range), float(clipping_range)
    weights = [round(e / max_weight * q) / q for e in examples]
    total = sum(weights)
    step = 2 * c / q
    rounding = n * step * (1 + 2.5 * q * 2.0**-24) / total
    weighting = largest_value * n / (q * total)
    float32 = (2 * n + 1) * 2.0**-23 * largest_value
    return rounding + weighting + float32


def conflicts(study: Study) -> list[str]:
    """Why this study cannot run under SecAgg+ (empty: it can, or it does not ask)."""
    if study.secure_aggregation != "secagg+":
        return []
    out = []
    what = "secure-aggregation = secagg+"
    if study.strategy not in STRATEGIES:
        out.append(
            f"{what} cannot be combined with strategy = {study.strategy}: the server gets only "
            f"the weighted sum of the sites' models and {study.strategy} needs each site's "
            f"update; use one of {', '.join(STRATEGIES)}"
        )
    if study.exchange not in EXCHANGES:
        out.append(
            f"{what} cannot be combined with exchange = {study.exchange}: the server must "
            "receive nothing from a site but its masked model, and shared images (encrypted or "
            "not) are a per-site payload; set exchange = none"
        )
    if study.dp not in DP_MODES:
        out.append(
            f"{what} cannot be combined with dp = {study.dp}: the server would clip each "
            "site's update, which SecAgg+ hides from it; use dp = client-fixed or "
            "client-adaptive (sites clip, the server adds noise to the sum) or local-dpsgd"
        )
    sampled = sites_per_round(study)
    if sampled < MIN_SITES:
        out.append(
            f"{what} needs at least {MIN_SITES} sites per round, the study samples {sampled} "
            f"(num-sites = {study.num_sites}, fraction-train = {study.fraction_train:g}, "
            f"min-sites = {study.min_sites}): with 2, each site's model follows from the sum "
            "and a 32-bit mask seed"
        )
    if sampled * study.secagg_quantization_range >= MODULUS_RANGE:
        out.append(
            f"secagg-quantization-range = {study.secagg_quantization_range} is too large for "
            f"{sampled} sites per round: sites x range must stay below 2^32 (Flower's modulus), "
            f"at most {(MODULUS_RANGE - 1) // sampled}"
        )
    return out


def check_secure_aggregation(study: Study, source: str = "study") -> None:
    """Raise StudyError naming every key that SecAgg+ cannot be combined with."""
    problems = conflicts(study)
    if problems:
        raise StudyError(f"{source}: " + "; ".join(problems))
