"""tca-chat: a multi-turn chat REPL over the model's chat template.

    tca-chat -m model.gguf -sys "You are terse."

The KV cache carries over between turns: each turn evaluates only its new tokens, not the history.
Line editing and history come from readline. Ctrl-C stops the current answer and keeps the REPL;
/reset starts a new conversation; /exit or end of input (Ctrl-D) leaves.
"""

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from ._core import TcaError
from .cli import ArgumentParser, add_model_args, add_sampling_args, open_engine, run_command, sampling_kwargs

HELP = "/reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops an answer"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tca-chat", description="Chat with a GGUF model. " + HELP + ".")
    p.add_argument("-sys", "--system-prompt", help="system prompt")
    p.add_argument("--stats", action="store_true", help="print each turn's token counts and speed to stderr")
    add_model_args(p)
    add_sampling_args(p)
    return p


def _print_stats(timings: dict) -> None:
    print(
        f"[prompt {timings['prompt_tokens']} tokens: {timings['prompt_reused_tokens']} reused, "
        f"{timings['prompt_eval_tokens']} evaluated at {timings['prompt_tokens_per_s']:.1f} t/s; "
        f"generated {timings['generated_tokens']} at {timings['generated_tokens_per_s']:.1f} t/s]",
        file=sys.stderr,
    )


def run_repl(args: argparse.Namespace) -> int:
    """The REPL loop; args from build_parser() or from tca-run's -cnv (where -p is the system prompt)."""
    engine = open_engine(args)
    system = args.system_prompt or getattr(args, "prompt", None)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (input() gains line editing and history)
        except ImportError:
            pass
        print(f"tca-chat: {HELP}.", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print()
            continue
        line = line.strip()
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/reset":
            messages = list(start)
            engine.reset()
            print("(new conversation)", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": line})
        answer = []
        try:
            for chunk in engine.create_chat_completion(messages, stream=True, **sampling_kwargs(args)):
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    answer.append(text)
                    sys.stdout.write(text)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            print(" [stopped]", file=sys.stderr)  # the answer so far stays in the history
        except (ValueError, TcaError) as e:
            print(f"tca-chat: error: {e}", file=sys.stderr)
            messages.pop()
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": "".join(answer)})
        if getattr(args, "stats", False):
            _print_stats(engine.last_timings)
    return 0


def _main(argv: Optional[Sequence[str]]) -> int:
    return run_repl(build_parser().parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(_main, argv, "tca-chat")


if __name__ == "__main__":
    sys.exit(main())
