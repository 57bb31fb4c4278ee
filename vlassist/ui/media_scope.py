"""Per-user media: in header mode a `/media/…` file (thumbnail, image, export) is served only to its session's user.

Streamlit serves every shown image and download from `/media/<id>` to anyone who has the URL; the id's entropy
was the only protection between signed-in users. Each page run records which user its session belongs to, and
the middleware below answers 404 to a request whose user has no session showing that file.
"""

from __future__ import annotations

import threading

_owners: dict[str, str] = {}  # Streamlit session id → the user it was opened by
_lock = threading.Lock()


def remember_owner(owner: str) -> None:
    """Note that the running page session belongs to `owner` (called on every run, in header mode)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is not None:
        with _lock:
            _owners[ctx.session_id] = owner


def file_users(file_id: str) -> set[str]:
    """The users whose live sessions show the media file `file_id`."""
    from streamlit.runtime import Runtime

    if not Runtime.exists():
        return set()
    manager = Runtime.instance().media_file_mgr
    sessions = [session for session, files in dict(manager._files_by_session_and_coord).items()
                if file_id in files.values()]
    with _lock:
        return {_owners[session] for session in sessions if session in _owners}


class MediaScope:
    """ASGI middleware: `/media/<id>` answers 404 unless the request's user header names a user showing it."""

    def __init__(self, app, header: str):
        self.app, self.header = app, header.lower().encode("latin-1")

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if "/media/" in path:
            file_id = path.rsplit("/media/", 1)[1].split("/")[-1].split(".", 1)[0]
            user = dict(scope["headers"]).get(self.header, b"").decode("utf-8", "replace").strip()
            if not user or user not in file_users(file_id):
                body = b"Not found"
                await send({"type": "http.response.start", "status": 404,
                            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"9")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
