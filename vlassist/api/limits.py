"""Connection and request limits of `vlassist serve`: header size and time, idle connections, connections, body size.

Each limit answers with an OpenAI-shaped JSON error and closes the connection early, before the bytes it refuses are
held in memory: a client that sends nothing (or a byte a second) cannot keep a descriptor past the header timeout;
connections over the cap shed the oldest idle one or are answered 503; headers over the size limit are 431 and bodies
over theirs 413, both while the bytes are still arriving.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
FD_RESERVE = 128  # descriptors kept for the model's files, the database and the log, beyond connections


@dataclass(frozen=True)
class ConnectionLimits:
    """What one `vlassist serve` process accepts from its connections."""

    max_connections: int = 500
    header_timeout_s: float = 10.0  # from connecting (or the last answer) to a request's complete header
    keepalive_s: float = 5.0  # an idle keep-alive connection is closed after this long
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 50 * 1024 * 1024


def error_body(message: str, code: str, type: str = "invalid_request_error", param: str | None = None) -> bytes:
    """An OpenAI-shaped error body."""
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


def raise_descriptor_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(limits: ConnectionLimits, descriptors: int) -> int:
    """The most connections to hold at once: the setting, but never so many that accept() runs out of descriptors."""
    return max(8, min(limits.max_connections, descriptors - FD_RESERVE))


def _raw_response(status: int, reason: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode("ascii") + body


def guarded_protocol(limits: ConnectionLimits, cap: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header timeout, a connection cap (shed the oldest idle, else 503) and 431s."""

    class GuardedH11Protocol(H11Protocol):
        """One HTTP connection, closed if it sends no complete request header in time."""

        def connection_made(self, transport) -> None:  # type: ignore[override]
            self._idle_since: float | None = time.monotonic()
            self._header_timer = None
            super().connection_made(transport)
            if len(self.connections) > cap and not self._shed_idle():
                log.warning("connection refused: %d connections open (cap %d)", len(self.connections) - 1, cap)
                transport.write(_raw_response(503, "Service Unavailable", error_body(
                    f"the server has {cap} connections open, its limit; try again in a moment",
                    "too_many_connections", "server_error")))
                transport.close()
                return
            self._arm_header_timer(limits.header_timeout_s)

        def _shed_idle(self) -> bool:
            """Close the connection that has waited longest without sending a request; False if none is idle."""
            idle = [c for c in self.connections
                    if c is not self and getattr(c, "_idle_since", None) is not None and not c.transport.is_closing()]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: c._idle_since)
            oldest.transport.close()
            return True

        def _arm_header_timer(self, delay: float) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(delay, self._header_timeout)

        def _header_timeout(self) -> None:
            self._header_timer = None
            # Still waiting for (the rest of) a request header: a silent or dribbling client.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._idle_since = None

        def on_response_complete(self) -> None:
            self._idle_since = time.monotonic()
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer(max(limits.keepalive_s, 0.1) + limits.header_timeout_s)

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            # h11 raises the same error for an oversized header as for a malformed one: the buffer tells them apart.
            buffered = len(self.conn.trailing_data[0])
            if buffered > limits.max_header_bytes:
                status, reason, body = 431, "Request Header Fields Too Large", error_body(
                    f"the request header is over the {limits.max_header_bytes // 1024} KB limit",
                    "header_too_large")
            else:
                status, reason, body = 400, "Bad Request", error_body("invalid HTTP request", "invalid_http")
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(_raw_response(status, reason, body))
            self.transport.close()

    return GuardedH11Protocol


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 (OpenAI-shaped) as soon as it is known."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> bytes:
        return error_body(f"the request body is over the {self.max_bytes / 1024 / 1024:g} MB limit; send fewer or "
                          "smaller images", "request_too_large")

    async def _refuse(self, send) -> None:
        body = self._too_large()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0
        over = False
        started = False

        async def limited_receive():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True  # the bytes read so far are dropped; the app sees a client that went away
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if over:
                if not started and message["type"] == "http.response.start":
                    started = True
                    await self._refuse(send)
                return  # whatever the app answers to a truncated body, the client gets the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(send)

