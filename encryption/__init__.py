"""medfed.encryption: image encryptors under one registry, the ciphertext
container, site keys, and the metrics that judge them.

This package is standalone: it imports nothing from client, server or
simulations.
"""

from encryption.base import Encryptor, FitReport
from encryption.container import ContainerError, Header, IntegrityError
from encryption.keys import derive_key, generate_key
from encryption.registry import get_encryptor, list_encryptors, register_encryptor

__all__ = [
    "ContainerError",
    "Encryptor",
    "FitReport",
    "Header",
    "IntegrityError",
    "derive_key",
    "generate_key",
    "get_encryptor",
    "list_encryptors",
    "register_encryptor",
]
