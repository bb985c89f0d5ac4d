"""Stop strings over streamed text.

The text returned never includes the stop string, and a stream never shows text that could still turn
out to be the start of one: such a tail is held back until the next piece decides it.
"""

from collections.abc import Sequence


def find_stop(text: str, stops: Sequence[str]) -> int:
    """The index where the earliest stop string starts in text, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """The length of the longest tail of text that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class StopMatcher:
    """Feeds pieces of text in, gives back the part that is safe to show."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text now safe to emit; after a stop string, the text before it, and stopped is set."""
        if self.stopped:
            return ""
        text = self._held + piece
        at = find_stop(text, self.stops)
        if at >= 0:
            self.stopped = True
            self._held = ""
            return text[:at]
        keep = partial_stop_len(text, self.stops)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The end of the stream: what was held back is not a stop string after all."""
        text, self._held = self._held, ""
        return "" if self.stopped else text
