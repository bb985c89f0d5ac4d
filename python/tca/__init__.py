"""tca-engine: a llama.cpp-style inference engine with TCA sparse attention."""

from ._core import TcaError

__all__ = ["TcaError"]
