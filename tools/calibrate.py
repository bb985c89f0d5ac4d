"""tca-calibrate: the offline phase of TCA (TCA_SPEC.md section 7).

One dense forward pass over a calibration text gives, per (layer, KV head), the column means m and the last
query's scores s (the engine computes them: _core.calibration_stats). Each of the 14 candidate
configurations is simulated with the runtime's own selection code (_core.tca_simulate), and each head gets
the sparsest candidate that keeps at least tau of the attention mass (dense when none does). The result is
a copy of the input GGUF, every tensor and key unchanged, plus the tca.* keys of spec section 6.

    tca-calibrate -m in.gguf -o out.gguf [--text FILE | --text-source pydoc|austen] [--ctx N] [--tau 0.9]
                  [-b 128] [-w 4096] [--alpha 0.5] [-t THREADS] [--plot FILE]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import gguf
import numpy as np

from tca import _core, fetch, tca_reference
from tca.progress import Progress

CTX_CAP = 32768  # default calibration length: the model's context length, capped here (spec 7.2)
CHARS_PER_TOKEN = 16  # a generous bound: a text prefix of CHARS_PER_TOKEN * L characters gives L tokens
SHADES = " ░▒▓█"  # heat map, density 0 .. 1


class CalibrateError(Exception):
    """A user error: printed as one line on stderr, exit code 1."""


class ArgParser(argparse.ArgumentParser):
    def error(self, message):
        raise CalibrateError(message)


def parse_args(argv):
    p = ArgParser(prog="tca-calibrate", description="Calibrate TCA head configurations of a GGUF model.")
    p.add_argument("-m", "--model", required=True, help="input GGUF model")
    p.add_argument("-o", "--output", required=True, help="output GGUF (the input plus tca.* metadata)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="calibration text file (UTF-8)")
    src.add_argument("--text-source", default="pydoc", help="built-in text: pydoc (default), austen")
    p.add_argument(
        "--ctx", type=int, default=0, help=f"calibration tokens (default: n_ctx_train, <= {CTX_CAP})"
    )
    p.add_argument("--tau", type=float, default=0.9, help="retained attention mass to reach (default 0.9)")
    p.add_argument("-b", "--block", type=int, default=128, help="block size b, a power of two (default 128)")
    p.add_argument("-w", "--window", type=int, default=4096, help="local window w >= b (default 4096)")
    p.add_argument("--alpha", type=float, default=0.5, help="block score weight alpha (default 0.5)")
    p.add_argument("-t", "--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--plot", help="write a PNG heat map of the head densities (needs matplotlib)")
    p.add_argument(
        "--stats",
        help="cache of the dense pass's statistics (.npz): reused when it matches the model and tokens, "
        "else written; they do not depend on b, w, alpha or tau",
    )
    args = p.parse_args(argv)
    b = args.block
    if b < 2 or b > 4096 or b & (b - 1):
        raise CalibrateError(f"-b {b}: the block size must be a power of two in [2, 4096]")
    if args.window < b:
        raise CalibrateError(f"-w {args.window}: the local window must be at least the block size {b}")
    if not 0.0 <= args.alpha <= 1.0:
        raise CalibrateError(f"--alpha {args.alpha}: must lie in [0, 1]")
    if not 0.0 < args.tau <= 1.0:
        raise CalibrateError(f"--tau {args.tau}: must lie in (0, 1]")
    if args.ctx < 0:
        raise CalibrateError(f"--ctx {args.ctx}: must be positive")
    if args.threads < 0:
        raise CalibrateError(f"-t {args.threads}: must be >= 0")
    return args


def read_text(args) -> tuple:
    """(text, source name) of the calibration text."""
    if args.text:
        try:
            return Path(args.text).read_text(encoding="utf-8"), Path(args.text).name
        except (OSError, UnicodeDecodeError) as e:
            raise CalibrateError(f"--text {args.text}: {e}") from None
    try:
        return fetch.text(args.text_source), args.text_source
    except ValueError as e:
        raise CalibrateError(f"--text-source: {e}") from None


def calibration_tokens(model, text: str, n_want: int) -> np.ndarray:
    """The first min(n_want, all) tokens of text, tokenizing only a prefix when that is enough."""
    prefix = text[: CHARS_PER_TOKEN * n_want]
    tokens = model.tokenize(prefix, True, False)
    if len(tokens) < n_want and len(prefix) < len(text):
        tokens = model.tokenize(text, True, False)
    return np.asarray(tokens[:n_want], dtype=np.int32)


def dense_statistics(model, tokens: np.ndarray, args) -> tuple:
    """m, s [n_layer, n_head_kv, L] from the engine's dense pass, or from the --stats cache when it was
    written for the same model file and tokens."""
    key = np.frombuffer(f"{Path(args.model).resolve()}:{Path(args.model).stat().st_size}".encode(), np.uint8)
    if args.stats and Path(args.stats).is_file():
        with np.load(args.stats) as cached:
            if np.array_equal(cached["key"], key) and np.array_equal(cached["tokens"], tokens):
                print(f"tca-calibrate: statistics from {args.stats}", file=sys.stderr)
                return cached["m"], cached["s"]
    with Progress("dense pass", total=model.n_layer, unit="layers") as bar:
        m, s = _core.calibration_stats(model, tokens, args.threads, lambda done, total: bar.update(1))
    if args.stats:
        np.savez(args.stats, key=key, tokens=tokens, m=m, s=s)
    return m, s


def choose_configs(m, s, b: int, w: int, alpha: float, tau: float) -> dict:
    """Per (layer, KV head): the chosen candidate, its retained share r and kept tokens, with the runtime's
    selection (tca_simulate). m, s [n_layer, n_head_kv, L] -> arrays [n_layer, n_head_kv, ...]."""
    cands = tca_reference.candidates(b)
    n_layer, n_head_kv, _ = m.shape
    config = np.zeros((n_layer, n_head_kv, cands.shape[1]), dtype=np.float32)
    retained = np.zeros((n_layer, n_head_kv))
    n_kept = np.zeros((n_layer, n_head_kv), dtype=np.int64)
    for il in range(n_layer):
        for ih in range(n_head_kv):
            r, kept = _core.tca_simulate(s[il, ih], m[il, ih], cands, b, w, alpha)
            c = tca_reference.choose_from(r, cands, b, tau)
            config[il, ih] = cands[c]
            retained[il, ih] = r[c]
            n_kept[il, ih] = kept[c]
    density = np.array([[tca_reference.density(p, b) for p in row] for row in config], dtype=np.float32)
    return {"config": config, "density": density, "retained": retained, "n_kept": n_kept}


def field_value(field: gguf.ReaderField):
    """(value, type, sub_type) of a metadata field, strings as raw bytes so that they copy byte for byte."""
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1]), vtype, None
    if vtype == gguf.GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], vtype, sub
        return field.contents(), vtype, sub
    return field.contents(), vtype, None


def write_calibrated(src: str, dst: str, tca_keys: list) -> None:
    """Copies src to dst with every tensor and every key (tca.* excepted) unchanged, then the tca_keys
    [(key, value, type, sub_type)]. Tensor data is streamed from the input's memory map. Writes dst + ".tmp"
    and renames it at the end, so a failure leaves no partial output."""
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    tmp = dst + ".tmp"
    writer = gguf.GGUFWriter(tmp, arch)  # adds general.architecture itself
    try:
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name.startswith("tca.") or name == "general.architecture":
                continue
            value, vtype, sub = field_value(field)
            writer.add_key_value(name, value, vtype, sub)
            if name == "general.alignment":
                writer.data_alignment = int(value)
        for key, value, vtype, sub in tca_keys:
            writer.add_key_value(key, value, vtype, sub)
        for t in reader.tensors:
            writer.add_tensor_info(
                t.name, t.data.shape, t.data.dtype, int(t.n_bytes), raw_dtype=t.tensor_type
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.write_padding(writer.fout[0], writer.fout[0].tell())
        for t in reader.tensors:
            writer.write_tensor_data(t.data)
        writer.close()
        os.replace(tmp, dst)
    except BaseException:
        writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise


def tca_metadata(args, choice: dict, n_tokens: int, source: str) -> list:
    """The tca.* keys of spec section 6 as (key, value, type, sub_type)."""
    T = gguf.GGUFValueType
    return [
        ("tca.version", 1, T.UINT32, None),
        ("tca.block_size", args.block, T.UINT32, None),
        ("tca.local_window", args.window, T.UINT32, None),
        ("tca.alpha", args.alpha, T.FLOAT32, None),
        ("tca.tau", args.tau, T.FLOAT32, None),
        ("tca.head_config", choice["config"].ravel().tolist(), T.ARRAY, T.FLOAT32),
        ("tca.head_density", choice["density"].ravel().tolist(), T.ARRAY, T.FLOAT32),
        ("tca.calibration.tokens", n_tokens, T.UINT32, None),
        ("tca.calibration.source", source, T.STRING, None),
    ]


def heat_map(density: np.ndarray) -> str:
    """Layers x KV heads: a shade per head, then the densities as numbers."""
    lines = ["density heat map (rows: layers, columns: KV heads; ' ' 0 ... '█' 1)"]
    for il, row in enumerate(density):
        shades = "".join(SHADES[min(len(SHADES) - 1, int(d * len(SHADES)))] * 2 for d in row)
        lines.append(f"  {il:3d} |{shades}| " + " ".join(f"{d:5.3f}" for d in row))
    return "\n".join(lines)


def summary(choice: dict, L: int, seconds: float) -> str:
    density, retained, n_kept = choice["density"], choice["retained"], choice["n_kept"]
    n_layer, n_head_kv = density.shape
    lines = [f"calibrated {n_layer} layers x {n_head_kv} KV heads on {L} tokens in {seconds:.1f} s"]
    lines.append("density per layer (mean over KV heads):")
    per_layer = density.mean(axis=1)
    for i0 in range(0, n_layer, 8):
        lines.append(
            "  " + "  ".join(f"{il:3d}: {per_layer[il]:.3f}" for il in range(i0, min(i0 + 8, n_layer)))
        )
    order = np.argsort(density, axis=None, kind="stable")
    for label, flat in (("sparsest", order[:3]), ("densest", order[::-1][:3])):
        heads = [np.unravel_index(i, density.shape) for i in flat]
        lines.append(f"{label} heads: " + ", ".join(f"L{il}.H{ih} {density[il, ih]:.3f}" for il, ih in heads))
    lines.append(f"mean density of the global region: {density.mean():.3f}")
    lines.append(f"mean retained attention mass: {retained.mean():.4f} (min {retained.min():.4f})")
    lines.append(f"expected KV share at {L} tokens: {n_kept.sum() / (L * n_layer * n_head_kv):.3f}")
    lines.append(heat_map(density))
    return "\n".join(lines)


def plot(density: np.ndarray, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2 + 0.5 * density.shape[1], 1 + 0.2 * density.shape[0]))
    im = ax.imshow(density, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xlabel("KV head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="density")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run(argv) -> None:
    args = parse_args(argv)
    if not Path(args.model).is_file():
        raise CalibrateError(f"-m {args.model}: no such file")
    want_plot = args.plot is not None and has_matplotlib()
    if args.plot is not None and not want_plot:
        print(f"tca-calibrate: --plot {args.plot}: matplotlib is not installed, no plot", file=sys.stderr)
    text, source = read_text(args)
    model = _core.Model(args.model)
    n_want = args.ctx or min(model.n_ctx_train or CTX_CAP, CTX_CAP)
    tokens = calibration_tokens(model, text, n_want)
    L = len(tokens)
    if L <= args.window + args.block:
        raise CalibrateError(
            f"the calibration sequence has {L} tokens ({source}, --ctx {args.ctx or n_want}); "
            f"it must be longer than w + b = {args.window + args.block}"
        )
    print(
        f"tca-calibrate: {model.desc}, {L} tokens of {source}, b = {args.block}, w = {args.window}",
        file=sys.stderr,
    )

    t0 = time.monotonic()
    m, s = dense_statistics(model, tokens, args)
    choice = choose_configs(m, s, args.block, args.window, args.alpha, args.tau)
    seconds = time.monotonic() - t0
    write_calibrated(args.model, args.output, tca_metadata(args, choice, L, source))
    print(summary(choice, L, seconds))
    if want_plot:
        plot(choice["density"], args.plot, f"{model.desc}: TCA density, b={args.block} w={args.window}")
        print(f"heat map written to {args.plot}")
    print(f"wrote {args.output}")


def main(argv=None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except (CalibrateError, _core.TcaError, OSError, ValueError) as e:
        print(f"tca-calibrate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tca-calibrate: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
