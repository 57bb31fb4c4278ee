"""A preview document for model-written HTML that can fetch nothing and run nothing."""

from __future__ import annotations

import html

# No network of any kind, no scripts, no frames loading URLs; inline styles and data: images only.
PREVIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"


def preview_document(page: str) -> str:
    """A wrapper page that shows `page` in a script-less sandboxed frame under a no-network CSP.

    The page goes into the frame's srcdoc, so nothing in it can break out of the frame; the outer document's
    CSP (inherited by the srcdoc frame, and with frame-src 'none' blocking any navigation of the frame to a
    URL, e.g. a clicked link or a meta refresh) keeps every request from leaving the browser.
    """
    inner = f'<meta http-equiv="Content-Security-Policy" content="{PREVIEW_CSP}">' + page
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{PREVIEW_CSP}">'
        "<style>html,body{margin:0;height:100%}iframe{border:0;width:100%;height:100%;background:#fff}</style>"
        f'</head><body><iframe sandbox="" referrerpolicy="no-referrer" title="HTML preview" '
        f'srcdoc="{html.escape(inner, quote=True)}"></iframe></body></html>'
    )
