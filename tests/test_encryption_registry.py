"""The one registry of methods."""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest

from encryption import Encryptor, get_encryptor, list_encryptors, register_encryptor
from encryption.container import Header, IntegrityError, open_container
from encryption.nn import TorchEncryptor
from encryption.registry import encryptor_class

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


@pytest.mark.parametrize("name", list_encryptors())
def test_every_method_has_a_docstring_and_flags(name, xray8):
    """The method's module opens its docstring with the method's name, and each
    flag says what the method does: `learned` (refuses to encrypt before fit),
    `lossless` (exact round trip), `deterministic` (same images, same bytes) and
    `aes_payload` (the container's payload is AES-GCM ciphertext, else GMAC only)."""
    cls = encryptor_class(name)
    assert cls.name == name
    doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
    assert doc.startswith(f"`{name}`:"), f"{cls.__module__}: docstring must open with `{name}`:"
    assert len(doc.split()) >= 10, f"{cls.__module__}: docstring does not describe the method"
    flags = ("lossless", "deterministic", "learned", "aes_payload")
    assert all(type(getattr(cls, flag)) is bool for flag in flags)

    options = {"epochs": 1} if cls.learned else {}
    if issubclass(cls, TorchEncryptor):
        options["min_steps"] = 1  # the flags' meaning, not the fit's quality
    enc = get_encryptor(name, **options)
    if cls.learned:
        with pytest.raises(RuntimeError, match="fit"):
            enc.encrypt(xray8, 8)
        enc.fit(xray8, 8)
    blob = enc.encrypt(xray8, 8)

    assert np.array_equal(enc.decrypt(blob), xray8) == cls.lossless
    assert (enc.encrypt(xray8, 8) == blob) == cls.deterministic
    open_container(enc.container_key, blob, encrypted=cls.aes_payload)
    with pytest.raises(IntegrityError):
        open_container(enc.container_key, blob, encrypted=not cls.aes_payload)


def _load_with(monkeypatch, *modules: str) -> None:
    """Load the registry afresh from `modules` (restored after the test)."""
    from encryption import registry

    monkeypatch.setattr(registry, "_METHOD_MODULES", registry._METHOD_MODULES + modules)
    monkeypatch.setattr(registry, "_loaded", False)
    list_encryptors()


def test_a_missing_method_module_is_an_error_naming_it(monkeypatch):
    with pytest.raises(ImportError, match=r"encryption\.methods\.no_such_method.*No module"):
        _load_with(monkeypatch, "encryption.methods.no_such_method")


def test_a_broken_method_module_is_an_error_naming_it_and_the_cause(monkeypatch, tmp_path):
    (tmp_path / "medfed_broken_method.py").write_text("raise ValueError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "medfed_broken_method", raising=False)

    with pytest.raises(ImportError, match=r"medfed_broken_method.*ValueError: half written"):
        _load_with(monkeypatch, "medfed_broken_method")


def test_order_is_the_registry_modules_whatever_was_imported_first():
    import importlib

    import encryption.methods.learned_codec_aes  # noqa: F401 - imported out of order on purpose
    from encryption import registry

    names = list_encryptors()

    order = [registry.encryptor_class(n).__module__ for n in names]
    expected = [importlib.import_module(m).__name__ for m in registry._METHOD_MODULES]
    assert order[: len(expected)] == expected  # the project's first, in registry order
