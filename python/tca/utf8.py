"""Incremental UTF-8 assembly of token bytes.

A token's bytes may end in the middle of a multi-byte character (byte-level BPE splits emoji and CJK
characters across tokens). The assembler holds such a tail back until the next token completes it, so a
stream never shows a broken character; bytes that can never become valid UTF-8 turn into U+FFFD.
"""

import codecs


class Utf8Assembler:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        """The text completed by these bytes; an unfinished character is kept for the next call."""
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        """The end of the stream: an unfinished character left over becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)

    def pending(self) -> bytes:
        """The bytes held back, waiting for the rest of their character."""
        return self._decoder.getstate()[0]
