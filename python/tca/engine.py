"""The Python face of the runtime, shaped like llama-cpp-python's `Llama`.

    from tca import Engine
    llm = Engine("model.gguf", n_ctx=2048)
    out = llm("Q: What is the capital of France? A:", max_tokens=32, stop=["Q:"])
    print(out["choices"][0]["text"])

The KV cache is kept between calls: when a new prompt starts with every token already in the context,
only the rest is evaluated (a chat's history is not processed again on each turn).
"""

import os
import random
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from . import _core
from .chat_template import ChatTemplate
from .stop import StopMatcher
from .utf8 import Utf8Assembler

Prompt = Union[str, bytes, Sequence[int]]


def _default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


class _Generation:
    """What one generation call reports once it is over."""

    def __init__(self) -> None:
        self.finish_reason = "length"
        self.n_generated = 0


class Engine:
    def __init__(
        self,
        model_path: Optional[str] = None,
        n_ctx: int = 512,
        n_threads: Optional[int] = None,
        n_batch: int = 512,
        seed: Optional[int] = None,
        device: str = "cpu",
        vocab_only: bool = False,
        attention: str = "dense",
        verbose: bool = False,
        tca_block: int = 0,
        tca_window: int = 0,
        tca_alpha: float = -1.0,
        tca_density: float = -1.0,
    ) -> None:
        """model_path None: the default model (tca.fetch.default_model_path()). n_ctx 0: the model's
        training context. seed None: a random seed; calls without their own seed draw from it."""
        if model_path is None:
            from .fetch import default_model_path

            model_path = default_model_path()
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"model file not found: {model_path}")
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0 (0: the model's), got {n_ctx}")
        if n_batch <= 0:
            raise ValueError(f"n_batch must be > 0, got {n_batch}")
        n_threads = _default_threads() if n_threads is None or n_threads <= 0 else n_threads
        self.model_path = model_path
        self.n_threads = n_threads
        self.n_batch = n_batch
        self.verbose = verbose
        if device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got '{device}'")
        self.model = _core.Model(model_path, vocab_only=vocab_only)
        self.metadata: dict[str, str] = dict(self.model.metadata)
        self.ctx = None
        if not vocab_only:
            self.ctx = _core.Context(
                self.model,
                n_ctx=n_ctx or self.model.n_ctx_train,
                n_threads=n_threads,
                n_batch=n_batch,
                attention=attention,
                tca_block=tca_block,
                tca_window=tca_window,
                tca_alpha=tca_alpha,
                tca_density=tca_density,
                device=device,
            )
            device = self.ctx.device  # what "auto" resolved to
        self._rng = random.Random(seed)
        self._tokens: list[int] = []  # the tokens whose K/V the context holds, in order
        self._last_logits: Optional[np.ndarray] = None  # [n_vocab], after the last evaluated token
        bos = self.model.bos_id
        eos = self.model.eos_id
        self.bos_text = self.model.token_to_piece(bos, True).decode("utf-8", "replace") if bos >= 0 else ""
        self.eos_text = self.model.token_to_piece(eos, True).decode("utf-8", "replace") if eos >= 0 else ""
        self.chat_template = ChatTemplate(self.model.chat_template, self.bos_text, self.eos_text)
        self.last_timings: dict[str, float] = {}
        if verbose:
            print(
                f"tca: loaded {model_path}: {self.model.desc}, {self.model.n_params / 1e6:.1f}M params, "
                f"{self.model.size_bytes / 2**20:.1f} MiB, n_ctx = {self.n_ctx()}, n_threads = {n_threads}, "
                f"attention = {attention}, device = {device}",
                file=sys.stderr,
            )

    # -- vocabulary ---------------------------------------------------------------------------------

    def tokenize(self, text: Union[bytes, str], add_bos: bool = True, special: bool = False) -> list[int]:
        """add_bos: add the model's special tokens (BOS when the model asks for it);
        special: parse special-token text such as <|im_start|> into their ids."""
        return list(self.model.tokenize(text, add_bos, special))

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """The bytes of the tokens; special: include the text of control tokens."""
        return bytes(self.model.detokenize(list(tokens), special))

    def token_bos(self) -> int:
        return self.model.bos_id

    def token_eos(self) -> int:
        return self.model.eos_id

    def n_vocab(self) -> int:
        return self.model.n_vocab

    def n_ctx(self) -> int:
        return self.ctx.n_ctx if self.ctx is not None else 0

    @property
    def n_tokens(self) -> int:
        """Tokens held in the context (the prefix the next call may reuse)."""
        return len(self._tokens)

    def reset(self) -> None:
        """Forgets the context: the next call evaluates its whole prompt."""
        if self.ctx is not None:
            self.ctx.reset()
        self._tokens = []
        self._last_logits = None

    # -- evaluation -------------------------------------------------------------------------------

    def _check_prompt(self, tokens: list[int]) -> None:
        if self.ctx is None:
            raise _core.TcaError(f"{self.model_path} was opened with vocab_only=True: it cannot generate")
        if not tokens:
            raise ValueError("the prompt is empty (no tokens to evaluate)")
        if len(tokens) > self.ctx.n_ctx:
            raise ValueError(
                f"prompt of {len(tokens)} tokens does not fit in the context of {self.ctx.n_ctx} "
                "(raise n_ctx)"
            )

    def _eval(self, tokens: list[int]) -> np.ndarray:
        self._last_logits = None
        logits = self.ctx.eval(tokens)
        self._tokens.extend(tokens)
        self._last_logits = logits  # a fresh array per call
        return self._last_logits

    def _prepare(self, tokens: list[int]) -> tuple[np.ndarray, int]:
        """Brings the context to hold exactly `tokens`; the logits after the last one and how many
        tokens were reused from the cache."""
        held = self._tokens
        reusable = (
            held
            and self.ctx.n_past == len(held)  # an interrupted call may have left them out of step
            and tokens[: len(held)] == held
            and (len(tokens) > len(held) or self._last_logits is not None)
        )
        if not reusable:
            self.reset()
        n_reused = len(self._tokens)
        rest = tokens[n_reused:]
        logits = self._eval(rest) if rest else self._last_logits
        return logits, n_reused

    def _generate(
        self,
        tokens: list[int],
        result: _Generation,
        max_tokens: Optional[int],
        sampling: Mapping[str, Any],
        seed: Optional[int],
        stop: Sequence[str],
        stop_ids: frozenset = frozenset(),
    ) -> Iterator[str]:
        """Yields the generated text in pieces safe to show: whole UTF-8 characters, never the start
        of a stop string. max_tokens None or <= 0: until the context is full."""
        timings = {"prompt_tokens": len(tokens), "prompt_reused_tokens": 0, "prompt_eval_tokens": 0}
        self.last_timings = timings
        t_start = time.perf_counter()
        t_prompt = t_start
        try:
            logits, n_reused = self._prepare(tokens)
            t_prompt = time.perf_counter()
            timings["prompt_reused_tokens"] = n_reused
            timings["prompt_eval_tokens"] = len(tokens) - n_reused

            sampler = _core.Sampler(seed=self._draw_seed(seed), **sampling)
            # The prompt counts towards the penalties, as in llama.cpp; the sampler keeps its last n.
            for t in tokens:
                sampler.accept(t)
            utf8 = Utf8Assembler()
            matcher = StopMatcher(stop)
            limit = max_tokens if max_tokens is not None and max_tokens > 0 else None
            while True:
                token = sampler.sample(logits)
                sampler.accept(token)
                if self.model.is_eog(token) or token in stop_ids:
                    result.finish_reason = "stop"
                    break
                result.n_generated += 1
                text = matcher.feed(utf8.feed(self.model.token_to_piece(token, False)))
                if text:
                    yield text
                if matcher.stopped:
                    result.finish_reason = "stop"
                    break
                if result.n_generated == limit or self.ctx.n_past >= self.ctx.n_ctx:
                    break
                logits = self._eval([token])
            if not matcher.stopped:
                text = matcher.feed(utf8.flush())
                text += matcher.flush()
                if matcher.stopped:
                    result.finish_reason = "stop"
                if text:
                    yield text
        finally:
            t_end = time.perf_counter()
            prompt_s = t_prompt - t_start
            gen_s = t_end - t_prompt
            timings.update(
                prompt_ms=prompt_s * 1e3,
                prompt_tokens_per_s=timings["prompt_eval_tokens"] / prompt_s if prompt_s > 0 else 0.0,
                generated_tokens=result.n_generated,
                generation_ms=gen_s * 1e3,
                generated_tokens_per_s=result.n_generated / gen_s if gen_s > 0 else 0.0,
            )

    def _draw_seed(self, seed: Optional[int]) -> int:
        if seed is not None and seed >= 0:
            return int(seed) & (2**64 - 1)
        return self._rng.getrandbits(64)

    def _prompt_tokens(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, (str, bytes)):
            return self.tokenize(prompt, add_bos=True, special=True)
        return [int(t) for t in prompt]

    # -- completions ------------------------------------------------------------------------------

    def create_completion(
        self,
        prompt: Prompt,
        max_tokens: Optional[int] = 16,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        stream: bool = False,
    ) -> Union[dict[str, Any], Iterator[dict[str, Any]]]:
        """An OpenAI-shaped text completion; stream=True: an iterator of chunks. max_tokens None or
        <= 0: until an end-of-generation token or a full context."""
        tokens = self._prompt_tokens(prompt)
        self._check_prompt(tokens)
        sampling = dict(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
        )
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        result = _Generation()
        pieces = self._generate(tokens, result, max_tokens, sampling, seed, stops)
        head = {"id": f"cmpl-{uuid.uuid4()}", "created": int(time.time()), "model": self.model_path}
        if stream:
            return self._completion_chunks(head, pieces, result)
        text = "".join(pieces)
        return {
            **head,
            "object": "text_completion",
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": _usage(len(tokens), result.n_generated),
        }

    __call__ = create_completion

    @staticmethod
    def _completion_chunks(head: dict, pieces: Iterator[str], result: _Generation) -> Iterator[dict]:
        def chunk(text: str, finish_reason: Optional[str]) -> dict:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
            return {**head, "object": "text_completion", "choices": [choice]}

        for text in pieces:
            yield chunk(text, None)
        yield chunk("", result.finish_reason)

    def create_chat_completion(
        self,
        messages: Sequence[Mapping[str, Any]],
        max_tokens: Optional[int] = None,
        temperature: float = 0.2,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        stream: bool = False,
    ) -> Union[dict[str, Any], Iterator[dict[str, Any]]]:
        """An OpenAI-shaped chat completion of messages [{"role", "content"}], rendered with the model's
        chat template (ChatML when it has none); stream=True: chunks carrying a `delta`."""
        tokens = self.chat_tokens(messages)
        self._check_prompt(tokens)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        stop_ids = frozenset()
        if self.chat_template.is_fallback:
            # ChatML ends a turn with <|im_end|>: a stop token when the vocabulary has it, else text.
            end = self.tokenize("<|im_end|>", add_bos=False, special=True)
            if len(end) == 1:
                stop_ids = frozenset(end)
            else:
                stops.append("<|im_end|>")
        sampling = dict(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
        )
        result = _Generation()
        pieces = self._generate(tokens, result, max_tokens, sampling, seed, stops, stop_ids)
        head = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": self.model_path}
        if stream:
            return self._chat_chunks(head, pieces, result)
        text = "".join(pieces)
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": _usage(len(tokens), result.n_generated),
        }

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The prompt tokens of a chat: the rendered template, special tokens parsed, BOS added unless
        the template already wrote it."""
        text = self.chat_template.render(messages, add_generation_prompt=True)
        add_bos = not (self.bos_text and text.startswith(self.bos_text))
        return self.tokenize(text, add_bos=add_bos, special=True)

    @staticmethod
    def _chat_chunks(head: dict, pieces: Iterator[str], result: _Generation) -> Iterator[dict]:
        def chunk(delta: dict, finish_reason: Optional[str]) -> dict:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}

        yield chunk({"role": "assistant"}, None)
        for text in pieces:
            yield chunk({"content": text}, None)
        yield chunk({}, result.finish_reason)


def _usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    total = n_prompt + n_completion
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": total}
