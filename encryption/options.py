"""Checks of method options shared by the learned methods.

The base class already rejects unknown constructor options; these check the
known ones and the options of `fit`, with errors that name the method.
"""

from __future__ import annotations

from typing import Any


def positive_ints(method: str, **values: Any) -> tuple[int, ...]:
    """The values as ints, in the order given; ValueError naming the method
    and every option below 1."""
    bad = [f"{name}={value!r}" for name, value in values.items() if value < 1]
    if bad:
        raise ValueError(f"{method}: {', '.join(values)} must be >= 1, got {', '.join(bad)}")
    return tuple(int(value) for value in values.values())


def reject_fit_options(method: str, options: dict[str, Any]) -> None:
    """TypeError naming the method and every option `fit` does not take."""
    if options:
        raise TypeError(f"{method}.fit: unknown option(s) {', '.join(sorted(options))}")


def require_fitted(method: str, fitted: bool) -> None:
    """RuntimeError unless the method's learned state exists."""
    if not fitted:
        raise RuntimeError(
            f"{method}: call fit(images) or load_state_dict(state) before encrypt/decrypt"
        )
