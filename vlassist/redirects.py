"""ASGI middleware for both web servers (API and page): redirects name a path, never the request's Host header."""

from __future__ import annotations

from urllib.parse import urlsplit


class RelativeRedirects:
    """ASGI middleware: a redirect to this server (the trailing-slash one) names a path, never the client's Host."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()

        async def relative_send(message):
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                message = {**message, "headers": [(key, _relative(value, host)) if key.lower() == b"location"
                                                  else (key, value) for key, value in message.get("headers", [])]}
            await send(message)

        await self.app(scope, receive, relative_send)


def _relative(location: bytes, host: str) -> bytes:
    parts = urlsplit(location.decode("latin-1"))
    if parts.scheme and parts.netloc.lower() != host:
        return location  # a redirect elsewhere, chosen by the app, not taken from the request
    path = "/" + parts.path.lstrip("/")  # "//evil" would be protocol-relative: one slash only
    return (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
