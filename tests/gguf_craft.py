"""Hand-crafted GGUF bytes for the reader's tests: valid files holding every value type, and the pieces
to build hostile ones (wrong counts, lengths, types and offsets) field by field.

Layout written (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 KV count, the KV pairs,
the tensor infos, zero padding to the alignment, then the data section.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class VT(IntEnum):
    """GGUF metadata value types."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMAT = {
    VT.UINT8: "<B",
    VT.INT8: "<b",
    VT.UINT16: "<H",
    VT.INT16: "<h",
    VT.UINT32: "<I",
    VT.INT32: "<i",
    VT.FLOAT32: "<f",
    VT.BOOL: "<?",
    VT.UINT64: "<Q",
    VT.INT64: "<q",
    VT.FLOAT64: "<d",
}

# Tensor types used by the crafted files: ggml id -> (name, block size, bytes per block).
TENSOR_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 12: ("Q4_K", 256, 144)}


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gguf_str(s: str | bytes) -> bytes:
    """A GGUF string: u64 length, then the bytes (no terminator)."""
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def value(vtype: int, v, elem_type: int | None = None) -> bytes:
    """The encoding of one value (without its type id); arrays need elem_type."""
    if vtype == VT.STRING:
        return gguf_str(v)
    if vtype == VT.ARRAY:
        return u32(elem_type) + u64(len(v)) + b"".join(value(elem_type, x) for x in v)
    return struct.pack(_SCALAR_FORMAT[VT(vtype)], v)


def kv(key: str | bytes, vtype: int, v, elem_type: int | None = None) -> bytes:
    """One KV pair: key string, u32 type, value."""
    return gguf_str(key) + u32(vtype) + value(vtype, v, elem_type)


@dataclass
class Tensor:
    name: str
    shape: list[int]  # ne, ne[0] first
    type_id: int = 0
    data: bytes = b""
    offset: int | None = None  # relative to the data section; None: after the previous data, aligned
    n_dims: int | None = None  # None: len(shape)


def tensor_info(t: Tensor, offset: int) -> bytes:
    n_dims = len(t.shape) if t.n_dims is None else t.n_dims
    ne = b"".join(struct.pack("<q", n) for n in t.shape)
    return gguf_str(t.name) + u32(n_dims) + ne + u32(t.type_id) + u64(offset)


def craft(
    kvs: list[bytes],
    tensors: list[Tensor] = (),
    version: int = 3,
    alignment: int = 32,
    n_kv: int | None = None,
    n_tensors: int | None = None,
) -> bytes:
    """A GGUF file from encoded KV pairs and tensors. n_kv / n_tensors override the header's counts;
    alignment only lays out the file (add a general.alignment KV to declare another one)."""
    offsets, end = [], 0
    for t in tensors:
        off = -(-end // alignment) * alignment if t.offset is None else t.offset
        offsets.append(off)
        if t.data:
            end = max(end, off + len(t.data))
    head = b"GGUF" + u32(version)
    head += u64(len(tensors) if n_tensors is None else n_tensors) + u64(len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensor_info(t, off) for t, off in zip(tensors, offsets))
    head += bytes(-len(head) % alignment)
    data = bytearray(end)
    for t, off in zip(tensors, offsets):
        data[off : off + len(t.data)] = t.data
    return head + bytes(data)


# Every value type with a value that survives the round trip exactly: (key, type, value, element type).
ALL_TYPES = [
    ("t.u8", VT.UINT8, 250, None),
    ("t.i8", VT.INT8, -100, None),
    ("t.u16", VT.UINT16, 65000, None),
    ("t.i16", VT.INT16, -32000, None),
    ("t.u32", VT.UINT32, 4_000_000_000, None),
    ("t.i32", VT.INT32, -2_000_000_000, None),
    ("t.f32", VT.FLOAT32, -1.375, None),
    ("t.bool", VT.BOOL, True, None),
    ("t.str", VT.STRING, 'héllo "quoted" wörld', None),
    ("t.u64", VT.UINT64, 2**64 - 3, None),
    ("t.i64", VT.INT64, -(2**62) - 5, None),
    ("t.f64", VT.FLOAT64, 3.141592653589793, None),
    ("t.arr.u8", VT.ARRAY, [0, 7, 255], VT.UINT8),
    ("t.arr.i8", VT.ARRAY, [-128, 0, 127], VT.INT8),
    ("t.arr.u16", VT.ARRAY, [1, 65535], VT.UINT16),
    ("t.arr.i16", VT.ARRAY, [-32768, 5], VT.INT16),
    ("t.arr.u32", VT.ARRAY, [3, 1, 4, 1, 5], VT.UINT32),
    ("t.arr.i32", VT.ARRAY, [-7, 11, -13], VT.INT32),
    ("t.arr.f32", VT.ARRAY, [0.5, -2.25, 1e-3], VT.FLOAT32),
    ("t.arr.bool", VT.ARRAY, [True, False, True], VT.BOOL),
    ("t.arr.str", VT.ARRAY, ["a", "", "日本語", "x y"], VT.STRING),
    ("t.arr.u64", VT.ARRAY, [2**63 + 1, 0], VT.UINT64),
    ("t.arr.i64", VT.ARRAY, [-(2**63), 2**63 - 1], VT.INT64),
    ("t.arr.f64", VT.ARRAY, [1.0 / 3.0, -1e300], VT.FLOAT64),
    ("t.arr.empty", VT.ARRAY, [], VT.INT32),
]


def expected_value(vtype: int, v, elem_type: int | None):
    """The Python value the reader should return (FLOAT32 values rounded to float32)."""
    if vtype == VT.FLOAT32:
        return float(np.float32(v))
    if vtype == VT.ARRAY:
        return [expected_value(elem_type, x, None) for x in v]
    return v


def valid_tensors(rng: np.random.Generator) -> list[Tensor]:
    """A few tensors of awkward shapes and several types, filled with random bytes."""
    specs = [
        ("a.f32", [7, 3], 0),
        ("b.f16", [5], 1),
        ("c.q4_0", [64, 3, 2], 2),
        ("d.q4_k", [256, 1, 1, 2], 12),
    ]
    out = []
    for name, shape, type_id in specs:
        _, block, type_size = TENSOR_TYPES[type_id]
        n_bytes = int(np.prod(shape)) // block * type_size
        out.append(Tensor(name, shape, type_id, rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes()))
    return out


def valid_file(version: int = 3, seed: int = 0) -> tuple[bytes, list[Tensor]]:
    """A valid file with every value type (ALL_TYPES) and a few tensors; returns the bytes and tensors."""
    tensors = valid_tensors(np.random.default_rng(seed))
    kvs = [kv("general.architecture", VT.STRING, "llama")]
    kvs += [kv(key, vtype, v, elem) for key, vtype, v, elem in ALL_TYPES]
    return craft(kvs, tensors, version=version), tensors
