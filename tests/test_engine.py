"""The Python engine: UTF-8 assembly, stop strings, chat templates (pure), and the Engine end to end
on SmolLM2-135M-Instruct."""

import random

import numpy as np
import pytest

from tca import Engine, TcaError
from tca.chat_template import CHATML_TEMPLATE, ChatTemplate, ChatTemplateError
from tca.stop import StopMatcher, find_stop, partial_stop_len
from tca.utf8 import Utf8Assembler

TEXTS = [
    "plain ascii",
    "café naïve",
    "日本語のテキスト",
    "emoji 😀🎉 mixed é",
    "\u0800\uffff\U00010000\U0010ffff",
]


def random_splits(data, rng):
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


# -- UTF-8 assembly -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_utf8_every_split(text):
    data = text.encode()
    for cut in range(len(data) + 1):
        a = Utf8Assembler()
        first = a.feed(data[:cut])
        assert first == data[:cut].decode("utf-8", "ignore")[: len(first)]
        assert "\ufffd" not in first
        assert first + a.feed(data[cut:]) + a.flush() == text


@pytest.mark.parametrize("text", TEXTS)
def test_utf8_byte_by_byte_never_breaks(text):
    a = Utf8Assembler()
    pieces = [a.feed(bytes([b])) for b in text.encode()]
    # Only a character cut off by max_tokens at the very end may show as U+FFFD.
    assert "\ufffd" not in "".join(pieces).rstrip("\ufffd")
    assert all("\ufffd" not in p for p in pieces[:-2])
    assert "".join(pieces) + a.flush() == text
    assert a.pending() == b""


def test_utf8_random_splits():
    rng = random.Random(5)
    text = "".join(TEXTS) * 3
    for _ in range(50):
        a = Utf8Assembler()
        out = "".join(a.feed(p) for p in random_splits(text.encode(), rng))
        assert out + a.flush() == text


def test_utf8_holds_back_and_replaces_invalid():
    a = Utf8Assembler()
    assert a.feed("a€".encode()[:2]) == "a"  # € is 3 bytes: two of them wait
    assert a.pending() == "€".encode()[:1]
    assert a.feed(b"\xff") == "\ufffd\ufffd"  # a broken start and a byte that is never UTF-8
    assert a.feed("é".encode()[:1]) == ""
    assert a.flush() == "\ufffd"  # the stream ended mid-character


# -- stop strings ---------------------------------------------------------------------------------


def test_find_stop_and_partial():
    assert find_stop("abc Q: def User:", ["User:", "Q:"]) == 4
    assert find_stop("nothing here", ["Q:"]) == -1
    assert find_stop("text", ["", "x"]) == 2
    assert partial_stop_len("Hello Q", ["Q:"]) == 1
    assert partial_stop_len("Hello Us", ["Q:", "User:"]) == 2
    assert partial_stop_len("Hello", ["Q:"]) == 0
    assert partial_stop_len("aaa", ["aaab"]) == 3
    assert partial_stop_len("ab", ["ab"]) == 0  # a whole stop string is find_stop's business


def test_stop_matcher_holds_back_then_releases():
    m = StopMatcher(["Q:"])
    assert m.feed("Hello Q") == "Hello "
    assert m.feed("x") == "Qx"
    assert m.feed(" Q") == " "
    assert m.feed(":rest") == ""
    assert m.stopped
    assert m.feed("more") == "" and m.flush() == ""


def test_stop_matcher_flush_releases_tail():
    m = StopMatcher(["</end>"])
    assert m.feed("done </en") == "done "
    assert m.flush() == "</en"


@pytest.mark.parametrize("stops", [["Q:"], ["\n\n", "###"], ["User:", "Use"], ["ab", "abc", "b"]])
def test_stop_matcher_random_splits(stops):
    rng = random.Random(len(stops))
    alphabet = "abcQ:U\nse#r x"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        at = find_stop(text, stops)
        want = text if at < 0 else text[:at]
        m = StopMatcher(stops)
        out = ""
        for piece in random_splits(text, rng):
            out += m.feed(piece)
            assert want.startswith(out), (text, out)  # never shows text past a stop
            if m.stopped:
                break
        out += m.flush()
        assert out == want, (text, stops)
        assert m.stopped == (at >= 0)


# -- chat templates -------------------------------------------------------------------------------

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And Japan? 日本"},
]


def test_chatml_fallback():
    t = ChatTemplate(None)
    assert t.is_fallback and t.source == CHATML_TEMPLATE
    assert t.render(MESSAGES) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd Japan? 日本<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not t.render(MESSAGES[:2], add_generation_prompt=False).endswith("assistant\n")


def test_llama3_template():
    t = ChatTemplate(LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert t.render(MESSAGES[:2]) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_template_helpers():
    src = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ messages | tojson }}|{{ strftime_now('%Y') | length }}"
    )
    t = ChatTemplate(src)
    assert t.render(MESSAGES[3:]) == '[{"role": "user", "content": "And Japan? 日本"}]|4'
    with pytest.raises(ChatTemplateError, match="no system role"):
        t.render(MESSAGES)


def test_template_errors():
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="role"):
        ChatTemplate(None).render([{"content": "hi"}])
    # The sandbox refuses to reach Python internals.
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render(MESSAGES)
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{% set x = messages.append(1) %}").render(MESSAGES)


# -- the engine on a real model -------------------------------------------------------------------

# SmolLM2's template adds a default system prompt when there is none; with it this 135M Q4_1 model's first
# answer token is a near tie (0.1 logit), so the tests give their own system prompt.
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def engine():
    return Engine(n_ctx=512, n_threads=2, seed=1)


def test_engine_basics(engine):
    assert engine.n_ctx() == 512
    assert engine.n_vocab() == 49152
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in engine.metadata.items())
    assert engine.metadata["general.architecture"] == "llama"
    ids = engine.tokenize("Hello world")
    assert ids and all(0 <= t < engine.n_vocab() for t in ids)
    assert engine.detokenize(ids) == b"Hello world"
    assert engine.tokenize(b"Hello world") == ids
    # special=True parses <|im_start|> into one control token; special=False keeps it text.
    assert len(engine.tokenize("<|im_start|>", add_bos=False, special=True)) == 1
    assert len(engine.tokenize("<|im_start|>", add_bos=False, special=False)) > 1
    text = "naïve 😀 日本"
    assert engine.detokenize(engine.tokenize(text, add_bos=False)) == text.encode()


def test_chat_greedy_paris(engine):
    out = engine.create_chat_completion(QUESTION, max_tokens=32, temperature=0)
    assert out["object"] == "chat.completion"
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant" and "Paris" in msg["content"]
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    usage = out["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completion_shape_and_streaming(engine):
    prompt = "The three primary colors are"
    out = engine(prompt, max_tokens=12, temperature=0)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert isinstance(out["created"], int) and out["model"] == engine.model_path
    choice = out["choices"][0]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 12
    chunks = list(engine.create_completion(prompt, max_tokens=12, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_stop_strings(engine):
    prompt = "Count: one, two, three, four, five,"
    full = engine(prompt, max_tokens=24, temperature=0)["choices"][0]["text"]
    stop = full[len(full) // 3 : len(full) // 3 + 3]
    assert stop.strip(), full
    want = full[: full.find(stop)]
    out = engine(prompt, max_tokens=24, temperature=0, stop=[stop, "never-seen"])
    assert out["choices"][0]["text"] == want
    assert out["choices"][0]["finish_reason"] == "stop"
    chunks = list(engine(prompt, max_tokens=24, temperature=0, stop=stop, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == want


def test_streaming_never_breaks_utf8(engine):
    prompt = "日本の首都は東京です。中国の首都は"
    full = engine(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
    pieces = [c["choices"][0]["text"] for c in engine(prompt, max_tokens=12, temperature=0, stream=True)]
    assert "".join(pieces) == full
    assert any(ord(ch) > 0x3000 for ch in full), full  # the model answered in CJK: multi-byte tokens
    # Only a character cut off by max_tokens at the very end may show as U+FFFD.
    assert "\ufffd" not in "".join(pieces).rstrip("\ufffd")
    assert all("\ufffd" not in p for p in pieces[:-2])


def test_chat_streaming(engine):
    chunks = list(engine.create_chat_completion(QUESTION, max_tokens=32, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "Paris" in text and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_seeded_sampling(engine):
    kw = dict(max_tokens=8, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = engine("Once upon a time", seed=7, **kw)["choices"][0]["text"]
    b = engine("Once upon a time", seed=7, **kw)["choices"][0]["text"]
    c = engine("Once upon a time", seed=8, **kw)["choices"][0]["text"]
    assert a == b
    assert a != c


def test_kv_prefix_reuse(engine):
    engine.reset()
    first = engine.tokenize("The quick brown fox jumps over the lazy dog.", add_bos=True)
    engine(first, max_tokens=4, temperature=0)
    held = engine.n_tokens
    assert held == len(first) + 3 and engine.ctx.n_past == held  # the last token is never evaluated
    longer = engine._tokens + engine.tokenize(" And then", add_bos=False)
    engine(longer, max_tokens=2, temperature=0)
    t = engine.last_timings
    assert t["prompt_reused_tokens"] == held
    assert t["prompt_eval_tokens"] == len(longer) - held
    # A prompt that diverges starts over.
    engine(first[:-1] + [first[0]], max_tokens=2, temperature=0)
    assert engine.last_timings["prompt_reused_tokens"] == 0


def test_chat_turns_evaluate_only_new_tokens(engine):
    engine.reset()
    messages = list(QUESTION)
    out = engine.create_chat_completion(messages, max_tokens=48, temperature=0)
    turn1 = engine.last_timings
    assert turn1["prompt_reused_tokens"] == 0
    messages += [out["choices"][0]["message"], {"role": "user", "content": "And of Germany?"}]
    n_past_before = engine.ctx.n_past
    out = engine.create_chat_completion(messages, max_tokens=48, temperature=0)
    turn2 = engine.last_timings
    assert turn2["prompt_reused_tokens"] == n_past_before
    assert turn2["prompt_eval_tokens"] == turn2["prompt_tokens"] - n_past_before
    assert turn2["prompt_eval_tokens"] < 20  # the new turn only, not the history
    assert "Berlin" in out["choices"][0]["message"]["content"]


def test_prompt_too_long_loses_nothing(engine):
    engine("Hello there", max_tokens=2, temperature=0)
    held = list(engine._tokens)
    with pytest.raises(ValueError, match="does not fit in the context of 512"):
        engine("word " * 600, max_tokens=4)
    with pytest.raises(ValueError, match="does not fit"):
        engine.create_chat_completion([{"role": "user", "content": "word " * 600}], stream=True)
    assert engine._tokens == held and engine.ctx.n_past == len(held)
    engine(held + engine.tokenize(" again", add_bos=False), max_tokens=2, temperature=0)
    assert engine.last_timings["prompt_reused_tokens"] == len(held)


def test_generation_stops_at_full_context():
    small = Engine(n_ctx=24, n_threads=2)
    prompt = small.tokenize("Write a long story about a dragon and a knight.")
    out = small(prompt, max_tokens=-1, temperature=0, top_k=1)
    assert out["choices"][0]["finish_reason"] in ("length", "stop")
    assert small.ctx.n_past <= 24
    assert out["usage"]["completion_tokens"] <= 24 - len(prompt) + 1


def test_vocab_only_and_errors(tmp_path):
    from tca.fetch import default_model_path

    v = Engine(default_model_path(), vocab_only=True)
    assert v.tokenize("Hello world") and v.n_ctx() == 0
    with pytest.raises(TcaError, match="vocab_only"):
        v("Hello")
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        Engine(str(tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + np.random.default_rng(0).integers(0, 255, 64, dtype=np.uint8).tobytes())
    with pytest.raises(TcaError):
        Engine(str(bad))
