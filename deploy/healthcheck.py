#!/usr/bin/env python3
"""Check that the vlassist app on this machine answers its health endpoint (127.0.0.1 only; stdlib only).

Exit status 0 when http://127.0.0.1:PORT/_stcore/health answers "ok", 1 otherwise. With --ready, the model must
be loaded too: /_vlassist/ready answers 200 "ready" (until then it says "loading (stage, NN %)"). With --wait, keep
trying for that many seconds (systemd's ExecStartPost: the unit is "started" once the model can answer).
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time


def healthy(port: int, timeout: float) -> bool:
    """One request to the app's health endpoint on the loopback address."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/_stcore/health")
        response = conn.getresponse()
        return response.status == 200 and response.read().strip() == b"ok"
    except OSError:
        return False
    finally:
        conn.close()


def ready(port: int, timeout: float) -> tuple[bool, str]:
    """One request to the app's readiness endpoint: (the model can answer, what the endpoint said)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/_vlassist/ready")
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace").strip()
        return response.status == 200 and text == "ready", text
    except OSError as exc:
        return False, f"no answer ({exc})"
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, check (and wait), report on stderr when unhealthy."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8501)
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    ap.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    ap.add_argument("--ready", action="store_true", help="wait for the model to be loaded, not only the page")
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.wait
    said = ""
    while args.ready:
        ok, text = ready(args.port, args.timeout)
        if ok:
            return 0
        if text != said:  # each new stage once, into the journal
            print(f"vlassist: {text}", file=sys.stderr, flush=True)
            said = text
        if time.monotonic() >= deadline:
            print(f"vlassist: the model is not ready on 127.0.0.1:{args.port}: {text}", file=sys.stderr)
            return 1
        time.sleep(1.0)
    while True:
        if healthy(args.port, args.timeout):
            return 0
        if time.monotonic() >= deadline:
            print(f"vlassist: no healthy answer on 127.0.0.1:{args.port}/_stcore/health", file=sys.stderr)
            return 1
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
