"""tca-engine: a llama.cpp-style inference engine with TCA sparse attention."""

from ._core import TcaError
from .engine import Engine

__all__ = ["Engine", "TcaError"]
