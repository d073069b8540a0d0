"""Any strategy from `flwr.serverapp.strategy`, by name, configured from a study."""

from __future__ import annotations

import inspect

from flwr.serverapp import strategy as flwr_strategies

from study.config import STRATEGIES, Study


def build_strategy(study: Study, initial_arrays=None):
    if study.strategy not in STRATEGIES:
        raise ValueError(
            f"strategy {study.strategy!r} is not supported; valid: {', '.join(STRATEGIES)}"
        )
    cls = getattr(flwr_strategies, study.strategy)
    params = inspect.signature(cls.__init__).parameters
    options = {
        "fraction_train": study.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": study.min_sites,
        "min_evaluate_nodes": study.min_sites,
        "min_available_nodes": study.num_sites,
    }
    if "proximal_mu" in params:
        options["proximal_mu"] = study.proximal_mu
    if "initial_arrays" in params:  # never needed so far; kept for forward compat
        options["initial_arrays"] = initial_arrays
    return cls(**{k: v for k, v in options.items() if k in params})
