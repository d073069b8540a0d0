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
that record first: a peer's message is hostile input. A layout is at most
`MAX_LAYOUT_BYTES` of JSON nested at most `MAX_LAYOUT_DEPTH` deep (checked
before it is parsed) with at most `MAX_ARRAYS` entries; each entry has a
non-empty name, a dtype from `DTYPES` (what numpy names the little-endian or
native numeric dtypes medfed sends, or "" with shape [] for Flower's legacy
Parameters), the stype "numpy.ndarray" and a shape
of at most `MAX_DIMS` non-negative ints whose values fit in the entry's bytes
(sizes are Python ints, compared before anything is allocated). Anything
else is a TransportError naming the record, the entry and what is wrong. The server packs what
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
import math
import re

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

TRANSPORT_KEY = "medfed.transport"
PACKED = "packed"  # the one Array of a packed ArrayRecord
SCHEMA = 1
# Caps on one record's layout (a site's reply is hostile input). medfed's models have
# 26 (xray) and 36 (mri) tensors; a layout entry is about 100 bytes.
MAX_ARRAYS = 4096  # entries per record
MAX_LAYOUT_BYTES = 1 << 20  # characters of a record's layout JSON
MAX_LAYOUT_DEPTH = 4  # {"arrays": [{"shape": [...]}]}: object, list, object, list
MAX_DIMS = 32  # numpy allows 64
MAX_NAME = 1024  # characters of an array's name
STYPE = "numpy.ndarray"
# numpy's names of the numeric dtypes in native (little-endian) order, as `Array.dtype`
# has them; ">f8", "O" (Python objects) and structured dtypes are refused. Flower's
# compat layer (legacy Parameters, SecAgg+) records no dtype or shape: dtype "" with
# shape [] is accepted too, its .npy data read later with numpy's pickle-free loader
DTYPES = frozenset(
    ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
    + ("float16", "float32", "float64")
)
_FIELDS = {"name", "dtype", "shape", "stype", "bytes"}
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?')  # an unclosed string runs to the end


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
    if len(layout) > MAX_LAYOUT_BYTES:
        raise TransportError(
            f"{where}: layout of {len(layout)} characters, more than {MAX_LAYOUT_BYTES} bytes"
        )
    depth = json_depth(layout)
    if depth > MAX_LAYOUT_DEPTH:
        raise TransportError(f"{where}: layout nested deeper than {MAX_LAYOUT_DEPTH} ({depth})")
    try:
        doc = json.loads(layout)
    except (ValueError, RecursionError) as exc:
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
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise TransportError(
                f"{where}: entry {i}: name must be a non-empty string of at most {MAX_NAME}"
            )
        if name in names:
            raise TransportError(f"{where}: entry {i}: name must be a unique string ({name!r})")
        if not isinstance(dtype, str) or not isinstance(stype, str):
            raise TransportError(f"{where}: entry {i} ({name}): dtype and stype must be strings")
        legacy = dtype == "" and shape == []  # Flower's compat Parameters: not recorded
        if dtype not in DTYPES and not legacy:
            raise TransportError(
                f"{where}: entry {i} ({name}): dtype {dtype[:40]!r} is not one of "
                + ", ".join(sorted(DTYPES))
            )
        if stype != STYPE:
            raise TransportError(
                f"{where}: entry {i} ({name}): stype {stype[:40]!r} is not {STYPE!r}"
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise TransportError(f"{where}: entry {i} ({name}): shape must be non-negative ints")
        if len(shape) > MAX_DIMS:
            raise TransportError(
                f"{where}: entry {i} ({name}): shape has {len(shape)} dimensions, "
                f"more than {MAX_DIMS}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TransportError(f"{where}: entry {i} ({name}): bytes must be an int >= 0")
        if not legacy and not values_fit(shape, np.dtype(dtype).itemsize, size):
            raise TransportError(
                f"{where}: entry {i} ({name}): shape {_short(shape)} of {dtype} does not fit "
                f"in its {size} bytes"
            )
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


def json_depth(text: str) -> int:
    """How deep `text`'s JSON arrays and objects nest (brackets in strings are not
    counted), found without parsing it: json.loads recurses once per level."""
    skeleton = _JSON_STRING.sub('""', text).encode("utf-8", "surrogatepass")
    codes = np.frombuffer(skeleton, dtype=np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    steps = opens.astype(np.int32) - closes.astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def values_fit(shape: list[int] | tuple[int, ...], itemsize: int, size: int) -> bool:
    """Whether `shape`'s values of `itemsize` bytes fit in `size` bytes, with every
    dimension at most `size` as well (a zero-sized shape cannot hide a huge one).
    Python ints throughout, stopping as soon as the product passes `size`."""
    total = 1
    for d in shape:
        if d > max(size, 1):
            return False
        total *= d
        if total * itemsize > size:
            return False
    return True


def _short(shape: list[int]) -> str:
    text = str(tuple(shape))
    return text if len(text) <= 60 else text[:57] + "..."


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
    except Exception as exc:  # noqa: BLE001 - numpy parses the header text with tokenize
        raise TransportError(f"not an .npy array ({type(exc).__name__}: {exc})") from None
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
    want = header + math.prod(shape) * got_dtype.itemsize  # Python ints: no overflow
    if len(array.data) != want:
        return f"its data is {len(array.data)} bytes, {dtype} {tuple(shape)} needs {want}"
    return None
