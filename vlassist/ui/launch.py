"""Start the Streamlit server for qwen_vl_app.py with its off-machine address lookups disabled.

Streamlit, when it refuses a websocket from a foreign Origin (or prints its URLs), looks up "the machine's own
addresses" with a UDP connect to 8.8.8.8 and an HTTP request to checkip.amazonaws.com. An offline tool must
never do that, and a refused handshake can come before any page has run, so the lookups are disabled here, in
the server process, before Streamlit starts. `python -m vlassist.ui.launch [streamlit options]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamlit import net_util

APP = Path(__file__).resolve().parent.parent.parent / "qwen_vl_app.py"


def _no_address() -> None:
    """Stand-in for Streamlit's IP lookups: the answer is always 'unknown', found without any network."""
    return None


def keep_local() -> None:
    """Make Streamlit's own-address lookups answer 'unknown' instead of asking hosts off the machine."""
    net_util.get_internal_ip = _no_address
    net_util.get_external_ip = _no_address


# The policy deploy/nginx.conf sends: nothing the page shows (an answer's Markdown image, a title) can load from,
# post to, or frame another host. Sent by the app itself too, so the direct port is as safe as the proxied one.
PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; media-src 'self' blob:; "
            "worker-src 'self' blob:; frame-src 'self'; frame-ancestors 'self'; base-uri 'self'; form-action 'self'; "
            "object-src 'none'")


class PageCSP:
    """ASGI middleware adding PAGE_CSP to every HTTP response of the page's server."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_csp(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                message = {**message, "headers": [*headers, (b"content-security-policy", PAGE_CSP.encode())]}
            await send(message)

        await self.app(scope, receive, with_csp)


def send_csp() -> None:
    """Make Streamlit's web server (Starlette) send PAGE_CSP with every response, and redirect by path only."""
    from starlette.middleware import Middleware
    from streamlit.web.server.starlette import starlette_app

    from vlassist.config import load_settings
    from vlassist.redirects import RelativeRedirects
    from vlassist.ui.media_scope import MediaScope

    original = starlette_app.create_streamlit_middleware
    if getattr(original, "vlassist_csp", False):
        return

    def create_streamlit_middleware():
        # Outermost but one: whatever Streamlit's own middleware answers (blocked paths too) carries the policy.
        scoped = [Middleware(MediaScope, header=header)] if (header := load_settings().user_header) else []
        return [Middleware(PageCSP), Middleware(RelativeRedirects), *scoped, *original()]

    create_streamlit_middleware.vlassist_csp = True
    starlette_app.create_streamlit_middleware = create_streamlit_middleware


def main(argv: list[str] | None = None) -> int:
    """Run `streamlit run qwen_vl_app.py` with the given extra options, lookups disabled and the CSP sent."""
    from streamlit.web import cli

    from vlassist.heap import return_large_blocks
    from vlassist.ui import readiness

    return_large_blocks()  # a session's decoded images leave with it, not into a heap that keeps them
    keep_local()
    send_csp()
    readiness.install_route()  # GET /_vlassist/ready; the model starts loading with the server
    return cli.main(["run", str(APP), *(sys.argv[1:] if argv is None else argv)], prog_name="streamlit")


if __name__ == "__main__":
    sys.exit(main())
