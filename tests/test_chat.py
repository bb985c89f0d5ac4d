"""tca-chat: the REPL driven through a pipe on SmolLM2-135M-Instruct (two turns, the second evaluating
only its new tokens; /reset; EOF; Ctrl-C stopping an answer) and its flag handling."""

import re
import signal
import subprocess
import sys
import time

from tca.chat import build_parser

STATS = re.compile(r"\[prompt (\d+) tokens: (\d+) reused, (\d+) evaluated")
FLAGS = ["--temp", "0", "-c", "1024", "-t", "2"]
SYSTEM = ["-sys", "You are a helpful assistant."]  # see QUESTION in test_engine.py


def chat(stdin, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "tca.chat", "--stats", *FLAGS, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stats(stderr):
    return [tuple(map(int, m)) for m in STATS.findall(stderr)]


def test_parse_flags():
    args = build_parser().parse_args(["-sys", "be brief", "-n", "12", "--temp", "0.3", "--stats"])
    assert args.system_prompt == "be brief" and args.n_predict == 12 and args.temp == 0.3 and args.stats


def test_two_turns_reuse_the_cache():
    r = chat("What is the capital of France?\nAnd what is the capital of Germany?\n", "-n", "48", *SYSTEM)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "Berlin" in r.stdout
    (n1, reused1, eval1), (n2, reused2, eval2) = stats(r.stderr)
    assert reused1 == 0 and eval1 == n1
    # Turn two holds turn one's prompt and answer: only the new user turn is evaluated.
    assert reused2 > n1 and eval2 == n2 - reused2 and eval2 < 20


def test_system_prompt_reset_and_exit():
    r = chat("Hello!\n/reset\nHello!\n/exit\nNever read\n", "-n", "8", "-sys", "You answer in one word.")
    assert r.returncode == 0, r.stderr
    (n1, reused1, _), (n2, reused2, _) = stats(r.stderr)
    assert reused1 == 0 and reused2 == 0 and n1 == n2  # the conversation started over
    assert "(new conversation)" in r.stderr and "Never read" not in r.stdout


def test_eof_exits_cleanly():
    r = chat("", "-n", "4")
    assert r.returncode == 0 and r.stdout == "" and "error" not in r.stderr


def test_run_cnv_enters_the_repl():
    r = subprocess.run(
        [sys.executable, "-m", "tca.cli", "-cnv", *FLAGS, *SYSTEM, "-n", "24"],
        input="What is the capital of France?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_ctrl_c_stops_the_answer_not_the_repl():
    proc = subprocess.Popen(
        [sys.executable, "-m", "tca.chat", "--stats", *FLAGS, "-n", "400"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc.stdin.write(b"Write a very long story about a dragon.\n")
        proc.stdin.flush()
        assert proc.stdout.read(1)  # the answer has started
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(b"/exit\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert b"[stopped]" in err
    (n, _, _), *_ = stats(err.decode())
    generated = int(re.search(rb"generated (\d+)", err).group(1))
    assert 0 < generated < 400
