"""Run the API: load the answerer once, put one answer service in front of it, serve with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from vlassist.backends import load_answerer
from vlassist.checkpoint import model_id
from vlassist.config import Settings
from vlassist.heap import return_large_blocks
from vlassist.images import set_decode_budget
from vlassist.service.answering import AnswerService
from vlassist.service.limits import context_admission, options_admission

from .app import create_app
from .limits import ConnectionLimits, connection_cap, guarded_protocol, raise_descriptor_limit

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_S = 2  # open connections get this long to end on Ctrl+C / SIGTERM (streams are stopped at once)


class _StoppingServer(uvicorn.Server):
    """A uvicorn server that, on Ctrl+C or SIGTERM, also stops every answer at once: a streaming answer would
    otherwise hold its connection open until it ended, and the process would not exit."""

    def __init__(self, config: uvicorn.Config, service: AnswerService):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:
        """Begin uvicorn's shutdown and cancel every queued and running answer; the streams end as stopped."""
        super().handle_exit(sig, frame)
        self.service.close(timeout=0)  # cancels and returns: the worker ends on its own thread


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, answerer=None) -> int:
    """Serve until interrupted (`answerer`, else the one settings name); requests share one service, as the page's."""
    set_decode_budget(int(settings.max_decode_megapixels * 1_000_000))
    return_large_blocks()  # decoded images go back to the system when their request ends
    answerer = answerer if answerer is not None else load_answerer(settings)
    info = answerer.info
    # The same refusals as the page's (too long a question or prompt), before a request waits in the queue.
    admission = context_admission(answerer, settings.max_prompt_tokens, settings.max_question_chars)
    service = AnswerService(answerer, admission=[admission, options_admission(answerer)])
    adapter = getattr(info, "adapter", "") or None
    app = create_app(service, settings, model_id=model_id(info.model_dir, adapter), family=info.family,
                     base_id=Path(info.model_dir).name if adapter else None)
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        log.warning("serving on %s without VLASSIST_API_KEY: anyone who can reach it can use the model", host)
    limits = ConnectionLimits(max_connections=settings.max_connections, header_timeout_s=settings.header_timeout_s,
                              keepalive_s=settings.keepalive_s, max_header_bytes=settings.max_header_kb * 1024,
                              max_body_bytes=int(settings.max_body_mb * 1024 * 1024))
    cap = connection_cap(limits, raise_descriptor_limit())
    # h11 (not httptools): its header-size limit is enforced while the header arrives, and the guarded protocol
    # adds the header timeout and the connection cap.
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                            http=guarded_protocol(limits, cap), timeout_keep_alive=int(max(1, limits.keepalive_s)),
                            h11_max_incomplete_event_size=limits.max_header_bytes)
    try:
        _StoppingServer(config, service).run()
    finally:
        service.close()
    return 0
