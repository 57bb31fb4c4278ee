"""The model side: the only package that imports torch and transformers."""

from vlassist.engine.core import Engine, GenerationError, load_engine

__all__ = ["Engine", "GenerationError", "load_engine"]
