"""tca-run: generate text from a prompt, llama-cli style.

    tca-run -m model.gguf -p "Once upon a time" -n 64
    tca-run -m model.gguf -cnv            # conversation mode: the chat REPL

Tokens stream to stdout as they come; the timings go to stderr. Any error is one line on stderr and
exit code 1.
"""

import argparse
import sys
from collections.abc import Sequence
from typing import Callable, NoReturn, Optional


class ArgumentParser(argparse.ArgumentParser):
    """argparse with llama.cpp-style failure: one line on stderr, exit code 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message}\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and context")
    g.add_argument("-m", "--model", help="GGUF model file (default: the bundled SmolLM2-135M-Instruct)")
    g.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size, 0: the model's (4096)")
    g.add_argument("-t", "--threads", type=int, default=0, help="threads (0: half the cores)")
    g.add_argument("-b", "--batch-size", type=int, default=512, help="prompt tokens per batch (512)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or auto (the GPU if it runs the model) (cpu)")
    g.add_argument("--attention", choices=["dense", "tca"], default="dense", help="attention kind (dense)")
    g.add_argument("--verbose", action="store_true", help="print model details on load")
    add_tca_args(p)


def add_tca_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TCA attention (--attention tca); 0 or negative: from the GGUF")
    g.add_argument("--tca-block", type=int, default=0, help="block size in tokens")
    g.add_argument("--tca-window", type=int, default=0, help="local window in tokens")
    g.add_argument("--tca-alpha", type=float, default=-1.0, help="alpha")
    g.add_argument("--tca-density", type=float, default=-1.0, help="uniform kept share (uncalibrated models)")


def tca_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        tca_block=args.tca_block,
        tca_window=args.tca_window,
        tca_alpha=args.tca_alpha,
        tca_density=args.tca_density,
    )


def add_sampling_args(p: argparse.ArgumentParser, temperature: float = 0.8) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--n-predict", type=int, default=-1, help="tokens to generate, -1: until done (-1)")
    g.add_argument("--temp", type=float, default=temperature, help=f"temperature, 0: greedy ({temperature})")
    g.add_argument("--top-k", type=int, default=40, help="top-k, 0: off (40)")
    g.add_argument("--top-p", type=float, default=0.95, help="top-p, 1: off (0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="min-p, 0: off (0.05)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="repeat penalty, 1: off (1.0)")
    g.add_argument("--repeat-last-n", type=int, default=64, help="tokens the penalties look at (64)")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="presence penalty (0)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="frequency penalty (0)")
    g.add_argument("-s", "--seed", type=int, default=-1, help="random seed, -1: random (-1)")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        max_tokens=args.n_predict,
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed if args.seed >= 0 else None,
    )


def open_engine(args: argparse.Namespace):
    from .engine import Engine

    return Engine(
        model_path=args.model,
        n_ctx=args.ctx_size,
        n_threads=args.threads or None,
        n_batch=args.batch_size,
        seed=args.seed if args.seed >= 0 else None,
        device=args.device,
        attention=args.attention,
        verbose=args.verbose,
        **tca_kwargs(args),
    )


def print_timings(timings: dict, file=sys.stderr) -> None:
    """llama.cpp's closing summary: prompt eval and generation, ms per token and tokens per second."""

    def line(name: str, ms: float, n: int, unit: str) -> str:
        per = ms / n if n else 0.0
        rate = 1e3 * n / ms if ms > 0 else 0.0
        return (
            f"{name} = {ms:10.2f} ms / {n:5d} {unit} ({per:8.2f} ms per token, {rate:8.2f} tokens per second)"
        )

    if not timings:
        return
    reused = timings.get("prompt_reused_tokens", 0)
    print(file=file)
    print(
        line("tca: prompt eval time", timings["prompt_ms"], timings["prompt_eval_tokens"], "tokens")
        + (f", {reused} reused from the cache" if reused else ""),
        file=file,
    )
    eval_line = line("tca:        eval time", timings["generation_ms"], timings["generated_tokens"], "runs  ")
    print(eval_line, file=file)


def run_command(
    main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]], prog: str
) -> int:
    """Runs a command's body, turning every error into one line on stderr and exit code 1."""
    from . import _core
    from .chat_template import ChatTemplateError

    try:
        return main(argv)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (_core.TcaError, ChatTemplateError, ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tca-run", description="Generate text from a prompt with a GGUF model.")
    src = p.add_argument_group("prompt")
    src.add_argument("-p", "--prompt", help="the prompt")
    src.add_argument("-f", "--file", help="read the prompt from this file")
    src.add_argument("--stop", action="append", default=[], help="stop at this text (repeatable)")
    src.add_argument("--no-display-prompt", action="store_true", help="do not echo the prompt")
    src.add_argument("--no-escape", action="store_true", help="do not process \\n, \\t... in the prompt")
    src.add_argument("-cnv", "--conversation", "--chat", action="store_true", help="chat REPL mode")
    src.add_argument("-sys", "--system-prompt", help="system prompt (conversation mode)")
    add_model_args(p)
    add_sampling_args(p)
    return p


def unescape(text: str) -> str:
    """llama.cpp's prompt escapes: \\n \\t \\r \\\\ \\" \\'."""
    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    if args.prompt is not None and args.file is not None:
        raise ValueError("give the prompt with -p or -f, not both")
    if args.conversation:
        from .chat import run_repl

        return run_repl(args)
    if args.file is not None:
        with open(args.file, encoding="utf-8") as f:
            prompt = f.read()
    elif args.prompt is not None:
        prompt = args.prompt if args.no_escape else unescape(args.prompt)
    else:
        raise ValueError("no prompt: give -p PROMPT or -f FILE (or -cnv for a conversation)")
    engine = open_engine(args)
    # The prompt is checked (tokenized, fits the context) before anything is shown.
    chunks = engine.create_completion(prompt, stop=args.stop, stream=True, **sampling_kwargs(args))
    out = sys.stdout
    if not args.no_display_prompt:
        out.write(prompt)
        out.flush()
    for chunk in chunks:
        out.write(chunk["choices"][0]["text"])
        out.flush()
    out.write("\n")
    out.flush()
    print_timings(engine.last_timings)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(_main, argv, "tca-run")


if __name__ == "__main__":
    sys.exit(main())
