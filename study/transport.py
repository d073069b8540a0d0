"""The model on the wire: each ArrayRecord of a message travels as one Array.

Why: flwr 1.42 sends a message object by object (the message, its records,
every Array and every chunk of it), one request each between the ServerApp,
the SuperLink, the SuperNode and the ClientApp process. medfed's X-ray model
has 26 tensors, so a train message was 56 objects and a round about a
thousand requests; `medfed bench deploy-round` measured those requests as
most of a deployed round. Packed, a message is a handful of objects; the
numbers in it are the same bytes.

How: `pack` replaces every ArrayRecord of two or more Arrays with an
ArrayRecord of one uint8 Array, the concatenation of the Arrays' serialized
bytes (`Array.data`, unchanged), and records each Array's name, dtype, shape,
serialization type and length in a ConfigRecord under `TRANSPORT_KEY`.
`unpack` rebuilds the same Arrays, byte for byte, checking every field of
that record first: a peer's message is hostile input. The server packs what
it sends and unpacks what it receives (`server.grid.exchange`); a site
unpacks a packed message before any other mod or handler sees it and packs
its reply only when it was asked in packed form (`client.client_app`), so a
plain Flower message gets a plain reply. Strategies, DP wrappers, SecAgg+ and
medfed's handlers see ordinary ArrayRecords. Byte accounting
(`server.strategy.message_bytes`) counts a message in its packed form, as it
travels.
"""

from __future__ import annotations

import io
import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

TRANSPORT_KEY = "medfed.transport"
PACKED = "packed"  # the one Array of a packed ArrayRecord
SCHEMA = 1
MAX_ARRAYS = 100_000  # per record: far above any model medfed builds
_FIELDS = {"name", "dtype", "shape", "stype", "bytes"}


class TransportError(ValueError):
    """A packed message whose layout record is malformed or does not match its data."""


def pack(content: RecordDict) -> RecordDict:
    """`content` with each ArrayRecord of two or more Arrays packed into one Array;
    `content` itself when there is nothing to pack (no layout record is added)."""
    if TRANSPORT_KEY in content:
        raise TransportError(f"message content already has a {TRANSPORT_KEY!r} record")
    layouts: dict[str, str] = {}
    out = RecordDict()
    for key, record in content.items():
        if isinstance(record, ArrayRecord) and len(record) > 1:
            entries, blobs = [], []
            for name, array in record.items():
                entries.append(
                    {
                        "name": name,
                        "dtype": array.dtype,
                        "shape": list(array.shape),
                        "stype": array.stype,
                        "bytes": len(array.data),
                    }
                )
                blobs.append(array.data)
            blob = np.frombuffer(b"".join(blobs), dtype=np.uint8)
            out[key] = ArrayRecord({PACKED: Array(blob)})
            layouts[key] = json.dumps({"schema": SCHEMA, "arrays": entries})
        else:
            out[key] = record
    if not layouts:
        return content
    out[TRANSPORT_KEY] = ConfigRecord(layouts)
    return out


def is_packed(content: RecordDict) -> bool:
    return TRANSPORT_KEY in content


def unpack(content: RecordDict) -> RecordDict:
    """The ArrayRecords `pack` packed, rebuilt; `content` itself when not packed.
    TransportError names the record and what is wrong."""
    if TRANSPORT_KEY not in content:
        return content
    layouts = content[TRANSPORT_KEY]
    if not isinstance(layouts, ConfigRecord):
        raise TransportError(f"{TRANSPORT_KEY!r} is a {type(layouts).__name__}, not a ConfigRecord")
    out = RecordDict()
    for key, record in content.items():
        if key == TRANSPORT_KEY:
            continue
        if key not in layouts:
            out[key] = record
            continue
        out[key] = _unpack_record(key, record, layouts[key])
    missing = [k for k in layouts if k not in content or k == TRANSPORT_KEY]
    if missing:
        raise TransportError(f"{TRANSPORT_KEY!r} describes records the message lacks: {missing}")
    return out


def _unpack_record(key: str, record, layout) -> ArrayRecord:
    where = f"packed record {key!r}"
    if not isinstance(record, ArrayRecord) or list(record.keys()) != [PACKED]:
        raise TransportError(f"{where}: expected an ArrayRecord holding one Array {PACKED!r}")
    if not isinstance(layout, str):
        raise TransportError(f"{where}: its layout is not a JSON string")
    try:
        doc = json.loads(layout)
    except ValueError as exc:
        raise TransportError(f"{where}: layout is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise TransportError(f"{where}: layout schema is not {SCHEMA}")
    entries = doc.get("arrays")
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_ARRAYS:
        raise TransportError(f"{where}: layout 'arrays' must be a list of 1..{MAX_ARRAYS} entries")
    packed = record[PACKED]
    packed_shape = tuple(packed.shape)
    problem = (
        array_problem(packed, "uint8", packed_shape)
        if len(packed_shape) == 1
        else f"shape {packed_shape}"
    )
    if problem:
        raise TransportError(
            f"{where}: the packed Array must be a 1-D uint8 numpy array ({problem})"
        )
    blob = memoryview(packed.data)[len(packed.data) - packed_shape[0] :]  # after its .npy header
    out, offset, names = ArrayRecord(), 0, set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != _FIELDS:
            raise TransportError(f"{where}: entry {i} must have exactly {sorted(_FIELDS)}")
        name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
        stype, size = entry["stype"], entry["bytes"]
        if not isinstance(name, str) or name in names:
            raise TransportError(f"{where}: entry {i}: name must be a unique string")
        if not isinstance(dtype, str) or not isinstance(stype, str):
            raise TransportError(f"{where}: entry {i} ({name}): dtype and stype must be strings")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise TransportError(f"{where}: entry {i} ({name}): shape must be non-negative ints")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TransportError(f"{where}: entry {i} ({name}): bytes must be an int >= 0")
        if offset + size > len(blob):
            raise TransportError(
                f"{where}: entry {i} ({name}) ends at byte {offset + size}, "
                f"past the packed data ({len(blob)} bytes)"
            )
        names.add(name)
        out[name] = Array(
            dtype=dtype, shape=tuple(shape), stype=stype, data=bytes(blob[offset : offset + size])
        )
        offset += size
    if offset != len(blob):
        raise TransportError(
            f"{where}: layout covers {offset} bytes, the packed data has {len(blob)}"
        )
    return out


def _npy_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"npy format version {version} is not 1.0 or 2.0")
    except ValueError as exc:
        raise TransportError(f"not an .npy array ({exc})") from None
    return dtype, tuple(shape), fp.tell()


def array_problem(array: Array, dtype: str, shape: tuple[int, ...]) -> str | None:
    """Why `array` is not a numpy array of `dtype` and `shape` whose data holds exactly
    that many values (its header read, nothing allocated); None when it is. A sender's
    Array states its shape twice (the record and the .npy header): both must agree."""
    if array.stype != "numpy.ndarray":
        return f"serialization {array.stype!r}, not numpy.ndarray"
    if array.dtype != dtype or tuple(array.shape) != tuple(shape):
        return f"{array.dtype} {tuple(array.shape)}, expected {dtype} {tuple(shape)}"
    try:
        got_dtype, got_shape, header = _npy_header(array.data)
    except TransportError as exc:
        return str(exc)
    if got_dtype.hasobject or str(got_dtype) != dtype or got_shape != tuple(shape):
        return f"its data is {got_dtype} {got_shape}, it claims {dtype} {tuple(shape)}"
    want = header + int(np.prod(shape, dtype=np.int64)) * got_dtype.itemsize
    if len(array.data) != want:
        return f"its data is {len(array.data)} bytes, {dtype} {tuple(shape)} needs {want}"
    return None
