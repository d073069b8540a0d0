"""The `dp` modes: one registry that every part of medfed reads.

Each mode says, in one place, how it runs and what it promises:

- `server_wrapper`: the Flower strategy wrapper (a class of
  `flwr.serverapp.strategy`) the server puts around the study's strategy;
  `wrap_strategy` builds it with the study's noise multiplier z, clipping
  norm C and sites per round n.
- `client_mod`: the Flower mod (`flwr.clientapp.mod`) a site runs around its
  training, or None.
- `clipped_by` / `noised_by`: who clips each update and who adds the noise
  ("site", "server", or None).
- `observes`: what each observer holds of one site's update (the "server",
  and a "global-model" holder: the sites and the public).
- `protects_against`: who the guarantee holds against (written beside every
  epsilon, study/privacy.py).
- `aggregation_weights`: how the server weighs the sites' updates in the mean
  ("uniform": 1 for each site, because Flower's noise z * C / n covers one
  site only on an unweighted mean; "examples": FedAvg's number of images).
- `accounting`: the study.privacy function that gives the mode's composed
  mechanism (`mechanism_for`).
- `secure_aggregation`: whether it combines with `secure-aggregation = secagg+`
  (server-fixed clips on the server, which SecAgg+ hides the updates from).

The meaning of each mode is README's `dp` row and study/privacy.py's
docstring; this module is their table. It imports nothing of medfed, so the
study config, the accountant, the server, the hospital and the attacks can
all read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OBSERVERS = ("server", "global-model")
GLOBAL_MODEL_HOLDERS = "holders of the global model (sites, the public); not the server"


def clipped_count_stddev(noise_multiplier: float, sites: int) -> float:
    """Adaptive clipping's noise on the clipped count: max(sites / 20, z) (Andrew
    et al. recommend sites / 20, which Flower cannot split below z with few
    sites; Flower then adds the matching, larger noise to the updates)."""
    return max(sites / 20, noise_multiplier)


@dataclass(frozen=True)
class DpMode:
    """One `dp` mode (module docstring)."""

    name: str
    description: str
    server_wrapper: str | None  # a class of flwr.serverapp.strategy
    client_mod: str | None  # a mod of flwr.clientapp.mod
    clipped_by: str | None  # "site" | "server" | None
    noised_by: str | None  # "site" | "server" | None
    observes: dict[str, str]  # observer (OBSERVERS) -> what it holds of a site's update
    protects_against: str
    aggregation_weights: str  # "uniform" | "examples"
    accounting: str  # a function of study.privacy: (study, rounds_done, num_examples) -> Mechanism
    level: str  # "site": a hospital's whole contribution; "sample": one image
    secure_aggregation: bool  # combines with secure-aggregation = secagg+

    @property
    def central(self) -> bool:
        """Noise added by the server to the mean of the sites' clipped updates."""
        return self.noised_by == "server"

    @property
    def adaptive(self) -> bool:
        """Adaptive clipping (Andrew et al. 2021): a noisy clipped-count release too."""
        return self.server_wrapper is not None and "Adaptive" in self.server_wrapper

    def wrapper_class(self) -> type | None:
        """The Flower strategy wrapper class, or None."""
        if self.server_wrapper is None:
            return None
        from flwr.serverapp import strategy as flwr_strategies

        return getattr(flwr_strategies, self.server_wrapper)

    def client_mod_function(self) -> Callable | None:
        """The Flower client mod, or None."""
        if self.client_mod is None:
            return None
        from flwr.clientapp import mod as flwr_mods

        return getattr(flwr_mods, self.client_mod)

    def wrap_strategy(
        self, strategy: Any, *, noise_multiplier: float, clipping_norm: float, sites: int
    ) -> Any:
        """`strategy` inside this mode's Flower wrapper (itself when there is none).

        Adaptive clipping: the clipped-count noise is `clipped_count_stddev`."""
        cls = self.wrapper_class()
        if cls is None:
            return strategy
        z, c, n = noise_multiplier, clipping_norm, sites
        if self.adaptive:
            return cls(
                strategy,
                z,
                n,
                initial_clipping_norm=c,
                clipped_count_stddev=clipped_count_stddev(z, n),
            )
        return cls(strategy, z, c, n)

    def mechanism(self, study: Any, rounds_done: int, *, num_examples: int | None = None):
        """The composed mechanism of `study` after `rounds_done` rounds (its `accounting`)."""
        from study import privacy

        return getattr(privacy, self.accounting)(study, rounds_done, num_examples=num_examples)


_CENTRAL_SERVER_VIEW = "the update clipped by the client mod, NO noise"

MODES: tuple[DpMode, ...] = (
    DpMode(
        name="none",
        description="no differential privacy",
        server_wrapper=None,
        client_mod=None,
        clipped_by=None,
        noised_by=None,
        observes={
            "server": "the raw update",
            "global-model": "the average (at worst the update itself)",
        },
        protects_against="nobody",
        aggregation_weights="examples",
        accounting="no_mechanism",
        level="site",
        secure_aggregation=True,
    ),
    DpMode(
        name="client-fixed",
        description="sites clip their update to a fixed norm; the server noises the mean",
        server_wrapper="DifferentialPrivacyClientSideFixedClipping",
        client_mod="fixedclipping_mod",
        clipped_by="site",
        noised_by="server",
        observes={
            "server": _CENTRAL_SERVER_VIEW,
            "global-model": "clipped update + the server's noise",
        },
        protects_against=GLOBAL_MODEL_HOLDERS,
        aggregation_weights="uniform",
        accounting="site_mechanism",
        level="site",
        secure_aggregation=True,
    ),
    DpMode(
        name="client-adaptive",
        description="sites clip their update to an adaptive norm; the server noises the mean",
        server_wrapper="DifferentialPrivacyClientSideAdaptiveClipping",
        client_mod="adaptiveclipping_mod",
        clipped_by="site",
        noised_by="server",
        observes={
            "server": _CENTRAL_SERVER_VIEW,
            "global-model": "clipped update + the server's noise",
        },
        protects_against=GLOBAL_MODEL_HOLDERS,
        aggregation_weights="uniform",
        accounting="site_mechanism",
        level="site",
        secure_aggregation=True,
    ),
    DpMode(
        name="server-fixed",
        description="the server clips each update to a fixed norm and noises the mean",
        server_wrapper="DifferentialPrivacyServerSideFixedClipping",
        client_mod=None,
        clipped_by="server",
        noised_by="server",
        observes={
            "server": "the raw update (it clips and noises after receiving)",
            "global-model": "clipped update + noise",
        },
        protects_against=GLOBAL_MODEL_HOLDERS,
        aggregation_weights="uniform",
        accounting="site_mechanism",
        level="site",
        secure_aggregation=False,
    ),
    DpMode(
        name="local-dpsgd",
        description="DP-SGD (Opacus) inside each site's training",
        server_wrapper=None,
        client_mod=None,
        clipped_by="site",
        noised_by="site",
        observes={
            "server": "the update trained with DP-SGD (noise added at the site)",
            "global-model": "the same",
        },
        protects_against="everyone who sees a site's update, the server included",
        aggregation_weights="examples",
        accounting="sample_mechanism",
        level="sample",
        secure_aggregation=True,
    ),
)

_BY_NAME = {mode.name: mode for mode in MODES}
DP_MODES: tuple[str, ...] = tuple(_BY_NAME)
# modes whose noise the server adds to the mean of the sites' clipped updates
CENTRAL_MODES: tuple[str, ...] = tuple(m.name for m in MODES if m.central)


def dp_mode(name: str) -> DpMode:
    """The registered mode `name`; ValueError lists the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"dp = {name!r} is not a dp mode; one of {', '.join(DP_MODES)}") from None


def list_dp_modes() -> list[str]:
    return list(DP_MODES)
