"""The one registry of methods."""

from __future__ import annotations

import numpy as np
import pytest

from encryption import Encryptor, get_encryptor, list_encryptors, register_encryptor
from encryption.container import Header

ALL_METHODS = {
    "aes-gcm",
    "lossless-aes",
    "deepedn",
    "bp-chaos",
    "invertible",
    "aae-scramble",
    "learned-codec-aes",
}


def test_all_seven_methods_are_registered():
    assert set(list_encryptors()) >= ALL_METHODS, (
        f"missing: {sorted(ALL_METHODS - set(list_encryptors()))}"
    )


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(KeyError) as info:
        get_encryptor("rot13")

    message = str(info.value)
    assert "rot13" in message and "aes-gcm" in message and "lossless-aes" in message


def test_duplicate_registration_is_rejected():
    class Impostor(Encryptor):
        name = "aes-gcm"

        def _encrypt_payload(self, images, bits):
            return b"", {}

        def _decrypt_payload(self, header: Header, payload: bytes) -> np.ndarray:
            raise NotImplementedError

    with pytest.raises(ValueError, match="already registered"):
        register_encryptor(Impostor)


def test_unknown_option_and_bad_key_are_clear():
    with pytest.raises(TypeError, match="unknown option"):
        get_encryptor("aes-gcm", colour="blue")
    with pytest.raises(ValueError, match="32 bytes"):
        get_encryptor("aes-gcm", key=b"short")


def test_every_method_has_a_docstring_and_flags():
    from encryption.registry import encryptor_class

    for name in list_encryptors():
        cls = encryptor_class(name)
        assert cls.name == name
        assert isinstance(cls.lossless, bool) and isinstance(cls.deterministic, bool)
        assert isinstance(cls.learned, bool)


def test_order_is_the_registry_modules_whatever_was_imported_first():
    import importlib

    import encryption.methods.learned_codec_aes  # noqa: F401 - imported out of order on purpose
    from encryption import registry

    names = list_encryptors()

    order = [registry.encryptor_class(n).__module__ for n in names]
    expected = [importlib.import_module(m).__name__ for m in registry._METHOD_MODULES]
    assert order[: len(expected)] == expected  # the project's first, in registry order
