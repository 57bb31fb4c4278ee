"""Serve at once on the captured-graph decoder and move to the compiled one when its compile is done.

A cold compile of the decode step takes a minute or two. Nobody should wait for it: the engine is ready as soon
as the plain CUDA-graph decoder is captured (seconds), and a background thread compiles a second decoder with its
own buffers. Compiling is host work plus a few steps on a side stream, so it runs beside answers; capturing a
CUDA graph needs the device to itself, so that last part, and the swap, happen under the engine's lock —
between two answers, never in the middle of one.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

import torch

from vlassist.engine.fastdecode import StaticDecoder
from vlassist.engine.loader import process_age_s

log = logging.getLogger(__name__)
# While the compile runs, a thread that answers gives up the interpreter lock at every device wait and must get it
# back from the compiler's thread, which holds it for the whole switch interval (5 ms by default): a prefill with
# many such waits took seconds instead of ~0.1 s. A short interval hands the lock back sooner.
COMPILE_SWITCH_S = 0.0002


class DecoderUpgrade:
    """A faster decoder being built beside the one that serves; `wait()` blocks until it is in place or failed."""

    def __init__(self, engine, mode: str, prepare: Callable[[], StaticDecoder],
                 finish: Callable[[StaticDecoder], None]):
        self.engine, self.mode = engine, mode
        self._prepare, self._finish = prepare, finish
        self.error: str = ""  # why the upgrade failed; the serving decoder stays
        self.seconds = 0.0  # start of the build to the swap
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"vlassist-{mode}-decoder", daemon=True)

    def start(self) -> DecoderUpgrade:
        """Begin building in the background; the serving decoder is untouched until the swap."""
        info = self.engine.info
        info.decode_reason = (f"{info.decode} serves while the {self.mode} decode step is built in the background "
                              f"(switches between answers when ready); {info.decode_reason}")
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        """True once the new decoder serves, or the build failed."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the upgrade ended (True) or `timeout` seconds passed (False)."""
        return self._done.wait(timeout)

    def _run(self) -> None:
        started = time.perf_counter()
        engine, info = self.engine, self.engine.info
        serving = info.decode
        interval = sys.getswitchinterval()
        try:
            sys.setswitchinterval(min(interval, COMPILE_SWITCH_S))
            try:
                with torch.inference_mode():  # thread-local: the compiled step must see what the capture will
                    decoder = self._prepare()  # beside answers: its own buffers, host-heavy compile
            finally:
                sys.setswitchinterval(interval)
            with engine.device_lock():  # capture and swap only between answers
                with torch.inference_mode():
                    self._finish(decoder)
                old, engine.fast = engine.fast, decoder
                self.seconds = time.perf_counter() - started
                info.decode = self.mode
                info.decode_reason = (f"{self.mode} decode step built in the background in {self.seconds:.1f} s "
                                      f"while {serving} served; switched {process_age_s():.1f} s after start")
                info.upgraded_s = process_age_s()
            del old
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the old decoder's buffers and graph pool
        except Exception as exc:  # keep serving on the decoder that works, and say why
            self.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}" if str(exc).strip() \
                else type(exc).__name__
            info.decode_reason = f"{serving} serves: the {self.mode} decode step failed ({self.error})"
            log.warning("background %s decoder failed, staying on %s: %s", self.mode, serving, self.error)
        finally:
            self._done.set()


def compile_in_background(engine) -> DecoderUpgrade:
    """Start building the compiled, captured decode step for `engine` (CUDA); the current decoder serves meanwhile."""
    model, max_tokens = engine.model, engine.settings.decode_context

    def prepare() -> StaticDecoder:
        decoder = StaticDecoder(model, max_tokens, "compile")
        for size in decoder.sizes:
            decoder.run_steps(size)  # compiles each bucket's step; the capture later only replays these kernels
        torch.cuda.current_stream().synchronize()
        return decoder

    return DecoderUpgrade(engine, "compile", prepare, StaticDecoder.capture).start()
