"""tca-run, tca-bench and tca-perplexity: flag parsing, one-line error exits, and end-to-end runs on
SmolLM2-135M-Instruct."""

import codecs
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tca.cli import build_parser, sampling_kwargs, unescape
from tca.tools import bench, perplexity

CHATML_QUESTION = "<|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n<|im_start|>assistant\\n"


def run(module, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(r, *fragments):
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "error:" in lines[0] and "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def zen_text():
    import this

    return codecs.decode(this.s, "rot13")


# -- parsing --------------------------------------------------------------------------------------


def test_parse_llama_cli_flags():
    args = build_parser().parse_args(
        "-m m.gguf -p hi -n 7 -c 256 -t 3 -b 64 --temp 0.5 --top-k 5 --top-p 0.9 --min-p 0.1 "
        "--repeat-penalty 1.1 --repeat-last-n 32 --presence-penalty 0.2 --frequency-penalty 0.3 -s 42 "
        "--device cpu --attention tca --no-display-prompt --stop A --stop B".split()
    )
    assert (args.model, args.prompt, args.ctx_size, args.threads, args.batch_size) == (
        "m.gguf",
        "hi",
        256,
        3,
        64,
    )
    assert args.attention == "tca" and args.no_display_prompt and args.stop == ["A", "B"]
    assert (args.tca_block, args.tca_window, args.tca_alpha, args.tca_density) == (0, 0, -1.0, -1.0)
    kw = sampling_kwargs(args)
    assert kw == dict(
        max_tokens=7,
        temperature=0.5,
        top_k=5,
        top_p=0.9,
        min_p=0.1,
        repeat_penalty=1.1,
        repeat_last_n=32,
        presence_penalty=0.2,
        frequency_penalty=0.3,
        seed=42,
    )
    assert sampling_kwargs(build_parser().parse_args([]))["seed"] is None
    args = build_parser().parse_args(["-cnv", "-sys", "be brief"])
    assert args.conversation and args.system_prompt == "be brief"
    assert build_parser().parse_args(["--chat"]).conversation


def test_unescape():
    assert unescape(r"a\nb\tc\\n\"q\' \x") == "a\nb\tc\\n\"q' \\x"
    assert unescape("trailing\\") == "trailing\\"


def test_bench_lists():
    args = bench.build_parser().parse_args("-p 128,512 -n 0,16 -d 0,4096 -t 1,2 -o json".split())
    assert args.n_prompt == [128, 512] and args.n_gen == [0, 16] and args.n_depth == [0, 4096]
    assert args.threads == [1, 2] and args.output == "json"


def test_perplexity_math():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 11)).astype(np.float32) * 4
    targets = rng.integers(0, 11, 5)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(perplexity.window_nll(logits, targets), -np.log(p[np.arange(5), targets]))
    nll = rng.random(100) * 3
    ppl, err = perplexity.perplexity_estimate(nll.sum(), (nll**2).sum(), 100)
    assert math.isclose(ppl, math.exp(nll.mean()))
    assert math.isclose(err, ppl * nll.std() / math.sqrt(99), rel_tol=1e-9)


# -- error exits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--no-such-flag"], "--no-such-flag"),
        (["-n", "many"], "-n"),
        (["--attention", "sparse"], "--attention"),
        (["-p", "hi", "-f", "x.txt"], "not both"),
        (["-m", "/nonexistent/model.gguf"], "no prompt"),
        (["-m", "/nonexistent/model.gguf", "-p", "hi"], "/nonexistent/model.gguf"),
        (["-f", "/nonexistent/prompt.txt"], "/nonexistent/prompt.txt"),
    ],
)
def test_run_error_exits(args, fragment):
    assert_one_line_error(run("tca.cli", *args), fragment)


def test_tool_error_exits(tmp_path):
    assert_one_line_error(run("tca.tools.bench", "-p", "abc"), "-p")
    assert_one_line_error(run("tca.tools.bench", "-r", "0"), "repetitions")
    assert_one_line_error(run("tca.tools.bench", "-m", tmp_path / "none.gguf", "-p", "8"), "none.gguf")
    assert_one_line_error(run("tca.tools.perplexity", "-f", tmp_path / "none.txt"), "none.txt")
    assert_one_line_error(run("tca.tools.perplexity", "-c", "4", "-f", "x"), "ctx-size")
    assert_one_line_error(run("tca.chat", "--temp"), "--temp")


def test_corrupt_gguf_exits(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4)
    assert_one_line_error(run("tca.cli", "-m", bad, "-p", "hi"), "bad.gguf")


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [[], ["--attention", "tca", "--tca-density", "0.5"]])
def test_run_answers_paris(attention):
    r = run("tca.cli", "-p", CHATML_QUESTION, "-n", "24", "--temp", "0", "-c", "256", "-t", "2", *attention)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("<|im_start|>user\nWhat is the capital of France?")
    assert "Paris" in r.stdout.split("assistant\n", 1)[1]
    assert "prompt eval time" in r.stderr and "tokens per second" in r.stderr and "eval time" in r.stderr


def test_run_prompt_too_long():
    r = run("tca.cli", "-p", "word " * 100, "-c", "32", "-n", "4")
    assert_one_line_error(r, "does not fit in the context of 32")


def test_bench_smoke():
    r = run("tca.tools.bench", "-p", "8,16", "-n", "2", "-d", "0,8", "-r", "2", "-t", "2", "-o", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["test"] for row in rows] == ["pp8", "pp16", "tg2", "pp8 @ d8", "pp16 @ d8", "tg2 @ d8"]
    for row in rows:
        assert len(row["samples_ts"]) == 2 and all(s > 0 and math.isfinite(s) for s in row["samples_ts"])
        assert row["kv_bytes"] > 0 and row["n_threads"] == 2 and row["model_n_params"] > 1e8
    by_test = {row["test"]: row["kv_bytes"] for row in rows}
    assert by_test["pp16 @ d8"] >= by_test["pp16"] >= by_test["pp8"] > 0
    r = run("tca.tools.bench", "-p", "8", "-n", "2", "-r", "1", "-t", "2", "--no-warmup")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("| model |") and len(lines) == 4 and "| pp8 |" in lines[2]
    r = run("tca.tools.bench", "-p", "8", "-n", "0", "-r", "1", "-t", "2", "-o", "csv", "--no-warmup")
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("model_filename,")


def test_perplexity_matches_direct_computation(tmp_path):
    """The tool's number against the method computed here from the context's logits."""
    from tca import Engine

    text_file = tmp_path / "zen.txt"
    text_file.write_text(zen_text())
    n_ctx, n_chunk = 64, 2
    r = run("tca.tools.perplexity", "-f", text_file, "-c", n_ctx, "--chunks", n_chunk, "-t", "2", "-b", 16)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("[1]") and "[2]" in r.stdout
    final = r.stdout.strip().splitlines()[-1]
    ppl, err = (float(v) for v in final.removeprefix("Final estimate: PPL = ").split(" +/- "))

    e = Engine(n_ctx=n_ctx, n_threads=2)
    tokens = e.model.tokenize(zen_text(), e.model.add_bos, False)
    nll = []
    for i in range(n_chunk):
        window = tokens[i * n_ctx : (i + 1) * n_ctx]
        e.ctx.reset()
        logits = e.ctx.eval(window, logits_all=True).astype(np.float64)
        for j in range(n_ctx // 2, n_ctx - 1):
            row = logits[j]
            nll.append(np.log(np.exp(row - row.max()).sum()) + row.max() - row[window[j + 1]])
    want = math.exp(np.mean(nll))
    assert 1 < want < 200
    assert math.isclose(ppl, want, rel_tol=2e-4), (ppl, want)
    assert 0 < err < ppl
