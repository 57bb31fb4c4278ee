"""Ready when the server is: the model starts loading with the server process, and GET /_vlassist/ready says
"ready" (200) once it can answer, "loading (stage, NN %)" or "failed: why" (503) until then.

Streamlit's own /_stcore/health answers as soon as the page can be served, before any model is loaded; systemd's
start check and load balancers wait on this endpoint instead, so the first visitor never waits for the load.
"""

from __future__ import annotations

import logging

from vlassist.config import load_settings
from vlassist.errors import ConfigError
from vlassist.service.models import ModelSlot

READY_PATH = "_vlassist/ready"
log = logging.getLogger(__name__)


def readiness(slot: ModelSlot) -> tuple[int, str]:
    """(HTTP status, text) for the model slot: 200 "ready", else 503 with what is happening."""
    state = slot.state
    if slot.current is not None and not state.busy:
        return 200, "ready"
    if state.phase == "failed":
        return 503, f"failed: {state.error}"
    if state.phase == "switching":
        return 503, f"switching to {state.target} ({state.stage}, {round(state.fraction * 100)} %)"
    return 503, f"loading ({state.stage or 'start'}, {round(state.fraction * 100)} %)"


def _slot() -> ModelSlot | None:
    from vlassist.ui import resources  # the same process-wide slot every page uses

    try:
        return resources.model_slot(load_settings())
    except ConfigError:
        return None  # the page shows the bad setting; there is no model to wait for


def preload() -> None:
    """Begin loading the configured model now, on the slot's own thread, before any page is visited."""
    slot = _slot()
    if slot is not None:
        slot.start_load(by="server start")


def _routes(base_url: str):
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ready(request):
        slot = _slot()
        status, text = readiness(slot) if slot is not None else (503, "failed: a setting is invalid (see the page)")
        return PlainTextResponse(text, status_code=status, headers={"Cache-Control": "no-store"})

    path = "/" + "/".join(part for part in (base_url.strip("/"), READY_PATH) if part)
    return [Route(path, ready, methods=["GET", "HEAD"])]


def install_route() -> None:
    """Add the readiness route to the Streamlit server this process is about to start, and load the model then."""
    from streamlit import config
    from streamlit.web.server.starlette import starlette_app

    streamlit_routes = starlette_app.create_streamlit_routes

    def with_ready(runtime):
        preload()  # the server is being built: start the model now, not on the first visit
        return [*_routes(config.get_option("server.baseUrlPath") or ""), *streamlit_routes(runtime)]

    starlette_app.create_streamlit_routes = with_ready
