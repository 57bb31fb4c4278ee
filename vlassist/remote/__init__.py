"""Answering on a remote OpenAI-compatible server instead of a local model (no torch here).

answerer  RemoteAnswerer (the Answerer protocol over the `openai` client), RemoteInfo, guess_family
sizing    the Qwen resize rule without transformers, so images are sent at the size the page chose
"""

from vlassist.remote.answerer import BackendError, RemoteAnswerer, RemoteInfo, guess_family

__all__ = ["BackendError", "RemoteAnswerer", "RemoteInfo", "guess_family"]
