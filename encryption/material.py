"""Decryption material: what `decrypt` needs (site key, method name, the
encryptor's state with its learned weights) as bytes that a grant carries.

Why not the key bundle's format (encryption/keys.py): that is `torch.save`,
i.e. pickle, read back with torch's restricted unpickler. A grant's bytes
come from another party through the server, so this format is pickle-free:

    magic "MFDM" | version (1 byte) | JSON length (u32, big-endian) | JSON | data

The JSON (UTF-8) is `{"key": <hex>, "method": <name>, "state": <value>}`.
A value is a JSON scalar (null, bool, number, string) or a tagged array:
`["dict", [[key, value], ...]]` (string keys), `["list", [...]]`,
`["tuple", [...]]`, `["bytes", offset, length]`,
`["tensor", dtype, shape, offset, length]` and
`["ndarray", dtype, shape, offset, length]`; offsets point into the data
section, little-endian, in order, with no gap and nothing left over.
Reading checks every offset, length, shape (at most `MAX_DIMS` dimensions,
each at most `MAX_DIM`) and dtype before it allocates. The bytes come from
another party: `from_bytes` ends in the material or in MaterialError, never
in another exception (JSON nested too deep for the parser, a number too long
to convert, a shape numpy or torch refuses: each is MaterialError with the
reason), and `encryptor()` raises MaterialError for a method or state that
does not load.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from encryption.keys import KEY_BYTES

if TYPE_CHECKING:
    from encryption.base import Encryptor

MAGIC = b"MFDM"
VERSION = 1
_PREFIX = struct.Struct(">4sBI")
MAX_DEPTH = 32
MAX_DIMS = 32  # dimensions of a tensor or array (numpy allows 64)
MAX_DIM = 2**31 - 1  # the largest dimension (zero-sized arrays could otherwise claim any)
# numpy dtype names allowed for tensors and arrays (little-endian on the wire)
_NUMPY_DTYPES = (
    "bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
)  # fmt: skip
_TORCH_DTYPES = (
    "bool", "uint8", "int8", "int16", "int32", "int64",
    "float16", "bfloat16", "float32", "float64",
)  # fmt: skip


class MaterialError(ValueError):
    """Bytes that are not well-formed decryption material."""


@dataclass(frozen=True)
class DecryptionMaterial:
    """A site key, its method name and the encryptor state that decrypts its containers."""

    key: bytes
    method: str
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != KEY_BYTES:
            raise MaterialError(f"decryption material: the site key must be {KEY_BYTES} bytes")
        if not isinstance(self.method, str) or not self.method:
            raise MaterialError("decryption material: the method name must be a non-empty string")
        if not isinstance(self.state, dict):
            raise MaterialError("decryption material: the state must be a dict")

    @classmethod
    def from_encryptor(cls, encryptor: Encryptor) -> DecryptionMaterial:
        """The material of a (fitted) encryptor: its key, name and `state_dict()`."""
        return cls(bytes(encryptor.key), encryptor.name, encryptor.state_dict())

    def encryptor(self) -> Encryptor:
        """A working encryptor for these containers: `get_encryptor(method, key)` + state.
        MaterialError when the method is unknown or its state does not load."""
        from encryption.registry import get_encryptor

        try:
            enc = get_encryptor(self.method, key=self.key)
            if self.state:
                enc.load_state_dict(self.state)
        except Exception as exc:  # noqa: BLE001 - material from another party: one error type
            raise MaterialError(
                f"decryption material: method {self.method[:40]!r} with this state does not "
                f"load ({_describe(exc)})"
            ) from None
        return enc

    def to_bytes(self) -> bytes:
        chunks: list[bytes] = []
        offset = [0]
        doc = {
            "key": self.key.hex(),
            "method": self.method,
            "state": _encode(self.state, chunks, offset, 0),
        }
        text = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
        return _PREFIX.pack(MAGIC, VERSION, len(text)) + text + b"".join(chunks)

    @classmethod
    def from_bytes(cls, data: bytes) -> DecryptionMaterial:
        """The material `data` holds; MaterialError (only) when it holds none."""
        try:
            return cls._from_bytes(data)
        except MaterialError:
            raise
        except Exception as exc:  # noqa: BLE001 - what the checks below missed: one error type
            raise MaterialError(f"decryption material: unreadable ({_describe(exc)})") from None

    @classmethod
    def _from_bytes(cls, data: bytes) -> DecryptionMaterial:
        data = bytes(data)
        if len(data) < _PREFIX.size:
            raise MaterialError(f"decryption material: {len(data)} bytes is too short")
        magic, version, text_len = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise MaterialError("decryption material: bad magic (not medfed decryption material)")
        if version != VERSION:
            raise MaterialError(f"decryption material: unsupported version {version}")
        end = _PREFIX.size + text_len
        if end > len(data):
            raise MaterialError(
                f"decryption material: JSON of {text_len} bytes runs past the end ({len(data)} bytes)"
            )
        try:
            doc = json.loads(data[_PREFIX.size : end].decode())
        except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a number too long
            raise MaterialError(f"decryption material: bad JSON ({_describe(exc)})") from None
        if not isinstance(doc, dict) or set(doc) != {"key", "method", "state"}:
            raise MaterialError(
                "decryption material: the JSON must have exactly key, method, state"
            )
        try:
            key = bytes.fromhex(doc["key"]) if isinstance(doc["key"], str) else None
        except ValueError:
            key = None
        if key is None:
            raise MaterialError("decryption material: the key is not a hex string")
        reader = _Reader(memoryview(data)[end:])
        state = reader.decode(doc["state"], 0)
        reader.finish()
        if not isinstance(state, dict):
            raise MaterialError("decryption material: the state must be a dict")
        return cls(key, doc["method"], state)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}"


def _check_little_endian() -> None:
    if sys.byteorder != "little":  # torch tensors are written in native order
        raise MaterialError("decryption material needs a little-endian machine")


def _encode(value: Any, chunks: list[bytes], offset: list[int], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise MaterialError(f"decryption material: state nested deeper than {MAX_DEPTH}")

    def put(raw: bytes) -> list[int]:
        at = offset[0]
        chunks.append(raw)
        offset[0] += len(raw)
        return [at, len(raw)]

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise MaterialError(f"decryption material: state key {k!r} is not a string")
            items.append([k, _encode(v, chunks, offset, depth + 1)])
        return ["dict", items]
    if isinstance(value, list | tuple):
        tag = "list" if isinstance(value, list) else "tuple"
        return [tag, [_encode(v, chunks, offset, depth + 1) for v in value]]
    if isinstance(value, bytes | bytearray):
        return ["bytes", *put(bytes(value))]
    if isinstance(value, np.ndarray):
        if value.dtype.name not in _NUMPY_DTYPES:
            raise MaterialError(f"decryption material: array dtype {value.dtype} is not supported")
        le = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        return ["ndarray", value.dtype.name, list(value.shape), *put(le.tobytes())]
    if type(value).__module__.startswith("torch") and type(value).__name__ in (
        "Tensor",
        "Parameter",
    ):
        import torch

        _check_little_endian()
        t = value.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _TORCH_DTYPES:
            raise MaterialError(f"decryption material: tensor dtype {dtype} is not supported")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return ["tensor", dtype, list(t.shape), *put(raw)]
    raise MaterialError(
        f"decryption material: cannot serialise a {type(value).__name__} in the encryptor state"
    )


class _Reader:
    """Decodes tagged JSON values against the data section, strictly in order."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, at: Any, length: Any) -> memoryview:
        if not (isinstance(at, int) and isinstance(length, int)) or isinstance(at, bool):
            raise MaterialError("decryption material: offsets must be integers")
        if at != self.pos or length < 0 or at + length > len(self.data):
            raise MaterialError(
                f"decryption material: data at {at} (+{length}) does not follow {self.pos} "
                f"within {len(self.data)} bytes"
            )
        self.pos += length
        return self.data[at : at + length]

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise MaterialError(
                f"decryption material: {len(self.data) - self.pos} bytes of data are not referenced"
            )

    def decode(self, value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise MaterialError(f"decryption material: state nested deeper than {MAX_DEPTH}")
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if not isinstance(value, list) or not value or not isinstance(value[0], str):
            raise MaterialError(f"decryption material: unexpected JSON value {str(value)[:40]}")
        tag, args = value[0], value[1:]
        if tag == "dict" and len(args) == 1 and isinstance(args[0], list):
            out = {}
            for item in args[0]:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                    raise MaterialError("decryption material: a dict entry is not [key, value]")
                if item[0] in out:
                    raise MaterialError(f"decryption material: state key {item[0]!r} repeats")
                out[item[0]] = self.decode(item[1], depth + 1)
            return out
        if tag in ("list", "tuple") and len(args) == 1 and isinstance(args[0], list):
            items = [self.decode(v, depth + 1) for v in args[0]]
            return items if tag == "list" else tuple(items)
        if tag == "bytes" and len(args) == 2:
            return bytes(self.take(*args))
        if tag in ("tensor", "ndarray") and len(args) == 4:
            return self._array(tag, *args)
        raise MaterialError(f"decryption material: unknown or malformed tag {tag!r}")

    def _array(self, tag: str, dtype: Any, shape: Any, at: Any, length: Any) -> Any:
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_DIM for s in shape
        ):
            raise MaterialError(
                f"decryption material: bad {tag} shape {str(shape)[:60]} "
                f"(dimensions are ints 0 to {MAX_DIM})"
            )
        if len(shape) > MAX_DIMS:
            raise MaterialError(
                f"decryption material: {tag} of {len(shape)} dimensions, more than {MAX_DIMS}"
            )
        if tag == "ndarray":
            if dtype not in _NUMPY_DTYPES:
                raise MaterialError(f"decryption material: array dtype {dtype!r} is not allowed")
            np_dtype = np.dtype(dtype).newbyteorder("<")
            raw = self.take(at, length)
            if length != math.prod(shape) * np_dtype.itemsize:
                raise MaterialError(
                    f"decryption material: array of {shape} {dtype} is not {length} bytes"
                )
            return (
                np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))
            )
        import torch

        _check_little_endian()
        if dtype not in _TORCH_DTYPES:
            raise MaterialError(f"decryption material: tensor dtype {dtype!r} is not allowed")
        torch_dtype = getattr(torch, dtype)
        itemsize = torch.empty((), dtype=torch_dtype).element_size()
        raw = self.take(at, length)
        if length != math.prod(shape) * itemsize:
            raise MaterialError(
                f"decryption material: tensor of {shape} {dtype} is not {length} bytes"
            )
        if length == 0:
            return torch.empty(shape, dtype=torch_dtype)
        return torch.frombuffer(bytearray(raw), dtype=torch_dtype).reshape(shape)
