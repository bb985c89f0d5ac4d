"""tca-convert: a Hugging Face checkpoint folder -> one GGUF file that this engine and llama.cpp run.

    tca-convert CHECKPOINT_DIR -o model.gguf --type f16|bf16|q8_0|q4_0

The whole conversion is planned first (config, every tensor's name, shape and type, the tokenizer), so a
bad checkpoint fails before anything is written. Then the GGUF header is written with all tensor infos,
and each tensor streams from the safetensors mapping to the file in chunks of rows: memory stays at a
few chunks, far under one tensor. The output is written to a temporary file beside the target and
renamed at the end; on any error it is removed.
"""

import argparse
import json
import os
import sys

import gguf
import numpy as np

from tca import TcaError
from tca.progress import Progress
from tca.tools.convert_arch import Arch, arch_from_config
from tca.tools.convert_tokenizer import convert_tokenizer
from tca.tools.safetensors_io import SafetensorsFile, to_f32

Q = gguf.GGMLQuantizationType
TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
CHUNK_BYTES = 16 << 20  # float32 bytes of rows converted at once


class TensorPlan:
    """One output tensor: where it comes from and what it becomes."""

    def __init__(self, name, shape, qtype, hf_name=None, shard=None, rows=None, data=None):
        self.name, self.shape, self.qtype = name, tuple(shape), qtype  # shape: [n_out, n_in] or [n]
        self.hf_name, self.shard, self.rows, self.data = hf_name, shard, rows, data

    @property
    def n_bytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape[:-1], dtype=np.int64)) * (self.shape[-1] // block) * type_size


def _load_json(path: str) -> dict:
    if not os.path.exists(path):
        raise TcaError(f"{path}: missing file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TcaError(f"{path}: not valid JSON: {e}") from None


def shard_map(ckpt_dir: str) -> dict:
    """Hugging Face tensor name -> shard file path, from the index file or the single file."""
    index_path = os.path.join(ckpt_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        weight_map = _load_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise TcaError(f"{index_path}: missing 'weight_map'")
        return {name: os.path.join(ckpt_dir, shard) for name, shard in weight_map.items()}
    files = sorted(f for f in os.listdir(ckpt_dir) if f.endswith(".safetensors"))
    if len(files) != 1:
        other = [f for f in os.listdir(ckpt_dir) if f.endswith((".bin", ".pt", ".pth"))]
        hint = " (PyTorch .bin checkpoints are not supported)" if other else ""
        raise TcaError(
            f"{ckpt_dir}: expected model.safetensors.index.json or one *.safetensors file, "
            f"found {len(files)} *.safetensors{hint}"
        )
    with SafetensorsFile(os.path.join(ckpt_dir, files[0])) as st:
        return {name: st.path for name in st.names()}


def tensor_qtype(name: str, shape: tuple, qtype: Q, tied: bool) -> Q:
    """Norms, biases and other vectors stay F32; a matrix whose rows do not fill whole blocks falls
    back to F16. With Q4_0 the output projection (token_embd when tied) is kept at Q8_0, as llama.cpp
    keeps it at a higher precision than the rest: its error goes straight into the logits."""
    if len(shape) == 1:
        return Q.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        return Q.F16
    if qtype == Q.Q4_0 and (name == "output.weight" or (tied and name == "token_embd.weight")):
        return Q.Q8_0
    return qtype


def plan_tensors(ckpt_dir: str, arch: Arch, qtype: Q, shards: dict) -> tuple:
    """-> (list of TensorPlan in file order, {shard path: SafetensorsFile}); checks every name and shape."""
    files = {}
    try:
        for path in sorted(set(shards.values())):
            if not os.path.exists(path):
                raise TcaError(f"{path}: missing file (named in the safetensors index)")
            files[path] = SafetensorsFile(path)
        return _plan(ckpt_dir, arch, qtype, shards, files), files
    except BaseException:
        for st in files.values():
            st.close()
        raise


def _plan(ckpt_dir: str, arch: Arch, qtype: Q, shards: dict, files: dict) -> list:
    available = {}
    for path, st in files.items():
        for name in st.names():
            if shards.get(name, path) == path:
                available[name] = path
    expected = arch.expected_tensors()
    wanted = {hf for hf, _ in expected.values()}
    for name in available:
        if name not in wanted and not arch.skipped(name):
            raise TcaError(f"{available[name]}: unexpected tensor '{name}' for {arch.gguf_arch}")
    plans = []
    for gguf_name, (hf_name, shape) in expected.items():
        if hf_name not in available:
            raise TcaError(f"{ckpt_dir}: tensor '{hf_name}' is missing from the checkpoint")
        st = files[available[hf_name]]
        have = st.tensors[hf_name].shape
        if tuple(have) != tuple(shape):
            raise TcaError(
                f"{st.path}: tensor '{hf_name}' has shape {list(have)} but config.json implies {list(shape)}"
            )
        t = tensor_qtype(gguf_name, shape, qtype, arch.tie_embd)
        plans.append(TensorPlan(gguf_name, shape, t, hf_name, st, arch.row_order(gguf_name)))
    for gguf_name, data in arch.extra_tensors().items():
        plans.append(TensorPlan(gguf_name, data.shape, Q.F32, data=data))
    return plans


def _convert_rows(plan: TensorPlan, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of the output tensor, converted to its type (bytes as uint8 for quantized); the
    source rows' pages are dropped from memory once read."""
    src = plan.shard.view(plan.hf_name)
    if plan.rows is None:
        picked, lo, hi = src[r0:r1], r0, r1
    else:
        order = plan.rows[r0:r1]
        picked, lo, hi = src[order], int(order.min()), int(order.max()) + 1
    rows = to_f32(picked, plan.shard.tensors[plan.hf_name].dtype)
    plan.shard.release(plan.hf_name, lo, hi)
    if not np.isfinite(rows).all():
        raise TcaError(f"{plan.shard.path}: tensor '{plan.hf_name}' holds NaN or Inf")
    return gguf.quants.quantize(rows, plan.qtype)


def write_tensor(fout, plan: TensorPlan) -> None:
    """Streams one tensor's data to the file, a chunk of rows at a time."""
    if plan.data is not None:
        fout.write(np.ascontiguousarray(plan.data, dtype=np.float32).tobytes())
        return
    n_rows = plan.shape[0]  # a vector is converted as one chunk of its elements
    step = max(1, n_rows if len(plan.shape) == 1 else CHUNK_BYTES // (plan.shape[-1] * 4))
    for r0 in range(0, n_rows, step):
        fout.write(_convert_rows(plan, r0, min(n_rows, r0 + step)).tobytes())


def convert(ckpt_dir: str, out_path: str, out_type: str = "f16", progress: bool = False) -> None:
    """Converts the checkpoint folder to a GGUF file; raises TcaError, leaving no output behind."""
    if out_type not in TYPES:
        raise TcaError(f"--type {out_type!r}: expected one of {', '.join(TYPES)}")
    if not os.path.isdir(ckpt_dir):
        raise TcaError(f"{ckpt_dir}: not a checkpoint folder")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out_path))):
        raise TcaError(f"{out_path}: the output folder does not exist")
    config = _load_json(os.path.join(ckpt_dir, "config.json"))
    arch = arch_from_config(config)
    tokenizer, special, chat_template = convert_tokenizer(ckpt_dir, config, arch.n_vocab)
    plans, files = plan_tensors(ckpt_dir, arch, TYPES[out_type], shard_map(ckpt_dir))

    tmp_path = f"{out_path}.{os.getpid()}.part"
    w = gguf.GGUFWriter(tmp_path, arch.gguf_arch)
    try:
        w.add_name(config.get("_name_or_path") or os.path.basename(os.path.abspath(ckpt_dir)))
        w.add_file_type(FILE_TYPES[out_type])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        arch.write_hparams(w)
        tokenizer.write(w, special, chat_template)
        for p in plans:
            w.add_tensor_info(p.name, p.shape, np.float32, p.n_bytes, raw_dtype=p.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = w.fout[0]
        bar = Progress(f"convert {out_path}", sum(p.n_bytes for p in plans), "B") if progress else None
        for p in plans:
            w.write_padding(fout, fout.tell())
            start = fout.tell()
            write_tensor(fout, p)
            if fout.tell() - start != p.n_bytes:
                raise TcaError(
                    f"internal: tensor '{p.name}' wrote {fout.tell() - start} of {p.n_bytes} bytes"
                )
            if bar is not None:
                bar.update(p.n_bytes)
        w.write_padding(fout, fout.tell())
        w.close()
        os.replace(tmp_path, out_path)
        if bar is not None:
            bar.close()
    finally:
        w.close()
        for st in files.values():
            st.close()
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tca-convert", description="Convert a Hugging Face checkpoint to GGUF.")
    ap.add_argument("checkpoint", help="folder with config.json, *.safetensors and tokenizer files")
    ap.add_argument("-o", "--output", required=True, help="GGUF file to write")
    ap.add_argument("--type", default="f16", choices=list(TYPES), help="type of the weight matrices")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        convert(args.checkpoint, args.output, args.type, progress=not args.quiet)
    except (TcaError, OSError) as e:
        print(f"tca-convert: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
