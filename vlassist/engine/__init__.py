"""The model side: the only package that imports torch and transformers.

core        Engine (device lock, worker thread, stream/plan/memory) and load_engine
encode      chat template, images as pixel rows (PixelMemo), token expansion: the model inputs
generate    one answer's token loop: Generation and the phases encode → look up prefix → prefill → decode
decode      M-RoPE positions, prefill, one decode step, logits processors and token choice
fastdecode  StaticDecoder: preallocated K/V buffers, captured decode/greedy/short-prefill graphs
kvcache     prefix K/V caches keyed by token ids and image contents (PrefixStore)
streaming   the timed text streamer answer tokens go to, and the stats made from it
template    turns → the checkpoint's chat template → token ids, user text as plain text (typed control tokens)
toolgrammar forced tool calls (tool_choice required or named) as an xgrammar structural tag
pixels, vision_attention, constrained, sizing, loader, compilecache: device-side patchify, one-call vision
attention, JSON-schema grammar, model-input sizing, checkpoint loading, compiled kernels kept across restarts
"""

from vlassist.engine.core import Engine, GenerationError, load_engine, warm_up

__all__ = ["Engine", "GenerationError", "load_engine", "warm_up"]
