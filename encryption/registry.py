"""The one registry of encryption methods.

Every list of method names in medfed (CLI choices, study validation, the
benchmark, the parametrized tests) comes from `list_encryptors()`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from encryption.base import Encryptor

_REGISTRY: dict[str, type[Encryptor]] = {}

# Modules that register methods when imported. One module per method.
_METHOD_MODULES = (
    "encryption.methods.aes_gcm",
    "encryption.methods.lossless_aes",
    "encryption.methods.deepedn",
    "encryption.methods.bp_chaos",
    "encryption.methods.invertible",
    "encryption.methods.aae_scramble",
    "encryption.methods.learned_codec_aes",
)
_loaded = False


def register_encryptor(cls: type[Encryptor]) -> type[Encryptor]:
    """Class decorator: add an Encryptor subclass under its `name`."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} has no `name` to register under")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"encryptor name {name!r} is already registered by {_REGISTRY[name]}")
    _REGISTRY[name] = cls
    return cls


def _load_methods() -> None:
    global _loaded
    if _loaded:
        return
    for module in _METHOD_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a missing module, a dependency, an error in its code
            raise ImportError(
                f"encryption method module {module} cannot be imported "
                f"({type(exc).__name__}: {exc}); fix it or take it out of "
                "encryption.registry._METHOD_MODULES"
            ) from exc
    _loaded = True


def list_encryptors() -> list[str]:
    """Registered method names: those of `_METHOD_MODULES` in that order (not in
    the order something happened to import them), then any other in
    registration order."""
    _load_methods()
    rank = {module: i for i, module in enumerate(_METHOD_MODULES)}
    return sorted(_REGISTRY, key=lambda name: rank.get(_REGISTRY[name].__module__, len(rank)))


def encryptor_class(name: str) -> type[Encryptor]:
    _load_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(_REGISTRY)
        raise KeyError(f"unknown encryption method {name!r}; valid methods: {valid}") from None


def get_encryptor(name: str, key: bytes | None = None, **config: Any) -> Encryptor:
    """Build method `name` with a 32-byte site key (a fresh one if None)."""
    return encryptor_class(name)(key=key, **config)
