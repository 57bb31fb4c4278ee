"""The HTML preview in a real headless Chromium: the page renders, and nothing in it can fetch or run."""

from __future__ import annotations

from vlassist.answers.html_preview import preview_document

HOSTILE_PAGE = """<!DOCTYPE html><html><head>
<meta http-equiv="refresh" content="0; url=http://198.51.100.7/refresh">
<link rel="stylesheet" href="http://198.51.100.7/style.css">
<script>document.title = "script ran"; fetch("http://198.51.100.7/fetch");</script>
<style>h1 { color: rgb(200, 0, 0); }</style>
</head><body><h1>Sign in</h1><img src="http://198.51.100.7/pixel.png">
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
<iframe src="http://198.51.100.7/frame"></iframe>
<a id="out" href="http://198.51.100.7/link">docs</a></body></html>"""


def test_preview_renders_and_fetches_nothing(browser):
    """The page's text and inline styles render; no request leaves for the network and no script runs."""
    page = browser.new_page()
    requests: list[str] = []
    blocked: list[str] = []  # stopped inside the browser by the preview's CSP, before any network access
    page.on("request", lambda r: requests.append(r.url))
    csp_failures = ("csp", "net::ERR_BLOCKED_BY_CSP")
    page.on("requestfailed", lambda r: blocked.append(r.url) if r.failure in csp_failures else None)
    page.set_content(preview_document(HOSTILE_PAGE))
    page.wait_for_timeout(800)
    frame = next(f for f in page.frames if f != page.main_frame)
    heading = frame.locator("h1")
    assert heading.inner_text() == "Sign in"
    assert heading.evaluate("e => getComputedStyle(e).color") == "rgb(200, 0, 0)"
    frame.locator("#out").click(no_wait_after=True)
    page.wait_for_timeout(500)
    # Chromium's preload scanner may issue a request that the CSP then blocks; none may get past it.
    assert [u for u in requests if u.startswith(("http:", "https:", "ws:")) and u not in blocked] == []
    assert frame.evaluate("document.title") != "script ran"
