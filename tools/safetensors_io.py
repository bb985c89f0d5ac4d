"""A minimal streaming reader and writer for safetensors files, with NumPy and mmap only.

Format: an 8-byte little-endian header length N, N bytes of JSON
`{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
then the raw little-endian data; offsets are relative to the first byte after the header.

The reader validates every entry before any data is touched and maps the file read-only: a tensor is a
view into the mapping, and `release` drops its pages from this process once it has been converted, so
that reading a checkpoint of many gigabytes keeps only the tensor being worked on resident.
"""

import json
import mmap
import os

import numpy as np

from tca import TcaError

# dtype name -> (NumPy storage dtype, bytes per element); BF16 is kept as its raw uint16 bits.
DTYPES = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit on the JSON header


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Raw bfloat16 bits (uint16) -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> raw bfloat16 bits (uint16), rounding to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def to_f32(data: np.ndarray, dtype: str) -> np.ndarray:
    """Stored data of the given safetensors dtype -> a float32 array (a new array)."""
    if dtype == "BF16":
        return bf16_to_f32(data)
    return data.astype(np.float32)


class TensorInfo:
    """One validated header entry; begin/end are absolute byte offsets in the file."""

    def __init__(self, name: str, dtype: str, shape: tuple, begin: int, end: int):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end

    @property
    def n_bytes(self) -> int:
        return self.end - self.begin


def _parse_entry(path: str, name: str, entry, data_start: int, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise TcaError(f"{path}: header entry for tensor '{name}' is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise TcaError(f"{path}: tensor '{name}' has dtype {dtype!r}; supported: {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise TcaError(f"{path}: tensor '{name}' has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise TcaError(f"{path}: tensor '{name}' has invalid data_offsets {offsets!r}")
    n_bytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][1]
    if offsets[1] - offsets[0] != n_bytes:
        raise TcaError(
            f"{path}: tensor '{name}' of shape {shape} {dtype} needs {n_bytes} bytes "
            f"but data_offsets {offsets} span {offsets[1] - offsets[0]}"
        )
    if offsets[1] > data_size:
        raise TcaError(
            f"{path}: file is truncated: tensor '{name}' ends at byte {data_start + offsets[1]} "
            f"but the file has {data_start + data_size} bytes"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


class SafetensorsFile:
    """A safetensors file opened read-only; the header is validated on open."""

    def __init__(self, path: str):
        self.path = str(path)
        self._mm = None
        with open(self.path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size < 8:
                raise TcaError(f"{self.path}: file is truncated: {file_size} bytes, no safetensors header")
            n_header = int.from_bytes(f.read(8), "little")
            if n_header > MAX_HEADER_BYTES:
                raise TcaError(f"{self.path}: header length {n_header} is over the limit; not safetensors?")
            if 8 + n_header > file_size:
                raise TcaError(
                    f"{self.path}: file is truncated: header of {n_header} bytes but the file has {file_size}"
                )
            try:
                header = json.loads(f.read(n_header))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise TcaError(f"{self.path}: header is not valid JSON: {e}") from None
            if not isinstance(header, dict):
                raise TcaError(f"{self.path}: header is not a JSON object")
            self.metadata = header.pop("__metadata__", None) or {}
            data_start, data_size = 8 + n_header, file_size - 8 - n_header
            self.tensors = {
                name: _parse_entry(self.path, name, entry, data_start, data_size)
                for name, entry in header.items()
            }
            spans = sorted((t.begin, t.end, t.name) for t in self.tensors.values() if t.n_bytes)
            for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
                if begin_b < end_a:
                    raise TcaError(f"{self.path}: tensors '{a}' and '{b}' overlap")
            if file_size > data_start:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def names(self) -> list:
        return list(self.tensors)

    def view(self, name: str) -> np.ndarray:
        """The tensor's stored data as a read-only view into the mapping (BF16 as uint16 bits)."""
        t = self.tensors[name]
        storage = DTYPES[t.dtype][0]
        if t.n_bytes == 0:
            return np.zeros(t.shape, dtype=storage)
        return np.frombuffer(
            self._mm, dtype=storage, count=t.n_bytes // storage.itemsize, offset=t.begin
        ).reshape(t.shape)

    def read_f32(self, name: str) -> np.ndarray:
        """The whole tensor as a new float32 array."""
        return to_f32(self.view(name), self.tensors[name].dtype)

    def release(self, name: str, row_begin: int = 0, row_end: int = None) -> None:
        """Drops the pages of rows [row_begin, row_end) of the tensor (all rows by default) from this
        process; they stay in the page cache, and a later read of a shared edge page faults it back."""
        t = self.tensors[name]
        if self._mm is None or t.n_bytes == 0:
            return
        row_bytes = t.n_bytes // t.shape[0] if t.shape else t.n_bytes
        begin = t.begin + row_begin * row_bytes
        end = t.end if row_end is None else t.begin + row_end * row_bytes
        begin -= begin % mmap.PAGESIZE
        if end > begin:
            self._mm.madvise(mmap.MADV_DONTNEED, begin, end - begin)

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor: the header (every name, dtype and shape) first, then
    each tensor's data in the declared order, so only one tensor need be in memory at a time."""

    def __init__(self, path: str, specs: list, metadata: dict = None):
        """specs: [(name, dtype, shape)] in file order; metadata: str -> str."""
        self.path = str(path)
        header, offset = {}, 0
        for name, dtype, shape in specs:
            if dtype not in DTYPES:
                raise TcaError(f"{self.path}: cannot write tensor '{name}' as {dtype!r}")
            n_bytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][1]
            header[name] = {
                "dtype": dtype,
                "shape": [int(d) for d in shape],
                "data_offsets": [offset, offset + n_bytes],
            }
            offset += n_bytes
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # keeps the data 8-byte aligned
        self._pending = [(n, h) for n, h in header.items() if n != "__metadata__"]
        self._f = open(self.path, "wb")
        self._f.write(len(blob).to_bytes(8, "little") + blob)

    def write(self, name: str, array: np.ndarray) -> None:
        """Writes the next tensor; float data is converted to the declared dtype."""
        if not self._pending:
            raise TcaError(f"{self.path}: tensor '{name}' was not declared")
        expected, h = self._pending.pop(0)
        if name != expected or tuple(array.shape) != tuple(h["shape"]):
            raise TcaError(
                f"{self.path}: expected tensor '{expected}' {h['shape']}, got '{name}' {list(array.shape)}"
            )
        if h["dtype"] == "BF16":
            data = array if array.dtype == np.uint16 else f32_to_bf16(array)
        else:
            data = np.ascontiguousarray(array, dtype=DTYPES[h["dtype"]][0])
        self._f.write(np.ascontiguousarray(data).tobytes())

    def close(self) -> None:
        if self._pending:
            name = self._pending[0][0]
            self._f.close()
            raise TcaError(f"{self.path}: closed before tensor '{name}' was written")
        self._f.close()


def save_file(path: str, tensors: dict, dtype: str = "F32", metadata: dict = None) -> None:
    """Writes a dict of arrays, all as one dtype."""
    w = SafetensorsWriter(path, [(n, dtype, a.shape) for n, a in tensors.items()], metadata)
    for name, array in tensors.items():
        w.write(name, array)
    w.close()
