"""Stream an answer and save it exactly once, however the stream ends (finished, stopped, failed, rerun)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from vlassist.conversation import GenerationOptions, Reply
from vlassist.store.history import OwnerStore


class AnswerRecorder:
    """Wraps a Reply: `chunks()` feeds the page, `finish()` stops what is left and stores the answer."""

    def __init__(self, reply: Reply, store: OwnerStore, conversation_id: int, *, options: GenerationOptions,
                 preset: str | None = None, model_family: str | None = None, model: str | None = None):
        self.reply = reply
        self.store = store
        self.conversation_id = conversation_id
        self.options = options
        self.preset = preset
        self.model_family = model_family
        self.model = model
        self.failure: BaseException | None = None
        self.ended = False
        self.message_id: int | None = None
        self.status: str | None = None
        self._it = iter(reply)

    def chunks(self) -> Iterator[str]:
        """The answer's text chunks; errors from the engine are remembered, then raised."""
        while True:
            try:
                chunk = next(self._it)
            except StopIteration:
                self.ended = True
                return
            except Exception as exc:
                self.failure = exc
                raise
            yield chunk

    def finish(self) -> int:
        """Store the answer once (complete, interrupted or error) and return its message id."""
        if self.message_id is not None:
            return self.message_id
        if self.failure is None and not self.ended:
            # The page stopped reading (Stop, a rerun, a closed tab): end generation and free the device.
            self.reply.stop()
            try:
                for _ in self._it:
                    pass
            except Exception as exc:  # an error while winding down still leaves a partial answer to keep
                self.failure = self.failure or exc
            self.status = "interrupted"
        elif self.failure is not None:
            self.status = "error"
        else:
            self.status = "interrupted" if self.reply.stats.stop_reason == "stopped" else "complete"
        stats = replace(self.reply.stats)  # a copy: the engine's own object is left as it reported it
        if self.failure is not None:
            stats.stop_reason = "error"
            stats.error = str(self.failure) or type(self.failure).__name__
            if self.status != "interrupted":
                self.status = "error"
        self.message_id = self.store.add_assistant_message(
            self.conversation_id, self.reply.text, self.status, preset=self.preset, options=self.options,
            stats=stats, model_family=self.model_family, model=self.model)
        return self.message_id
