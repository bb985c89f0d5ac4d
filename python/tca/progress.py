"""A tiny progress bar on stderr, for downloads, extraction, calibration and conversion.

On a terminal it redraws one line in place; otherwise (CI logs, pipes) it prints a plain line at most
every 10% so that logs stay short.
"""

import sys
import time


class Progress:
    """Counts `done` up to `total` (bytes, tokens, tensors: any unit) and shows it on stderr.

    Use as a context manager, or call close() at the end:
        with Progress("extract model.gguf", total=n_bytes, unit="B") as bar:
            bar.update(len(chunk))
    """

    def __init__(self, desc: str, total: int = 0, unit: str = ""):
        self.desc = desc
        self.total = total  # 0: unknown, only the count is shown
        self.unit = unit
        self.done = 0
        self.t_start = time.monotonic()
        self.is_tty = sys.stderr.isatty()
        self.t_drawn = 0.0
        self.tenth_printed = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.is_tty:
            now = time.monotonic()
            if now - self.t_drawn >= 0.1:  # redraw at most 10 times a second
                self.t_drawn = now
                sys.stderr.write("\r" + self._line())
                sys.stderr.flush()
        elif self.total > 0:
            tenth = min(10, self.done * 10 // self.total)
            if tenth > self.tenth_printed and tenth < 10:  # 100% is printed by close()
                self.tenth_printed = tenth
                sys.stderr.write(self._line() + "\n")

    def close(self) -> None:
        end = "\n"
        sys.stderr.write(("\r" if self.is_tty else "") + self._line() + end)
        sys.stderr.flush()

    def _line(self) -> str:
        elapsed = time.monotonic() - self.t_start
        if self.total > 0:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            return (
                f"{self.desc}: [{bar:<30}] {frac * 100:5.1f}% "
                f"{_fmt(self.done, self.unit)}/{_fmt(self.total, self.unit)} {elapsed:.1f}s"
            )
        return f"{self.desc}: {_fmt(self.done, self.unit)} {elapsed:.1f}s"


def _fmt(n: int, unit: str) -> str:
    if unit == "B":
        for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if n >= scale:
                return f"{n / scale:.1f} {suffix}"
        return f"{n} B"
    return f"{n}{' ' + unit if unit else ''}"
