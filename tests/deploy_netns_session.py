"""A whole vlassist session inside the current network namespace: app start, model load, ask in Chromium, store.

Run by tests/test_deploy_netns.py under `unshare --net`, where only a loopback interface exists. Brings that
interface up, runs the session on 127.0.0.1 and writes what happened to a JSON file:
    python tests/deploy_netns_session.py MODEL_DIR WORK_DIR RESULT_JSON [--cross-origin-probe]

With --cross-origin-probe it instead sends the app one websocket handshake from a foreign Origin and records
what the server process tried to reach while refusing it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import deploy_support as ds  # noqa: E402

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """`ip link set lo up` without iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def interfaces() -> list[str]:
    """Names of the network interfaces this namespace has."""
    return sorted(name for _, name in socket.if_nameindex())


def main(model_dir: Path, work: Path, result_path: Path, timeout_ms: int = 180_000) -> None:
    """The whole session; what the page showed, its requests, the stored rows and the audit log."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from vlassist.store.history import History

    result: dict = {"interfaces": interfaces()}
    loopback_up()
    image = work / "screen.png"
    Image.new("RGB", (120, 80), (30, 120, 200)).save(image)
    audit = work / "audit.jsonl"
    env = ds.app_env(model_dir, work / "data",
                     extra={"PYTHONPATH": str(ds.AUDIT_DIR), "VLASSIST_AUDIT_LOG": str(audit)})
    port = ds.free_port()
    started = time.monotonic()
    with ds.streamlit_app(port, env, work / "app.log"):
        with sync_playwright() as playwright:
            browser = ds.launch_chromium(playwright)
            page = browser.new_page()
            log = ds.record_page(page)
            shown = ds.browser_session(page, f"http://127.0.0.1:{port}/", "Read all text", image,
                                       timeout_ms=timeout_ms)
            browser.close()
    history = History.open(work / "data")
    store = history.for_owner("local")
    conversations = [store.get_conversation(c.id) for c in store.list_conversations()]
    history.close()
    result.update(
        seconds=round(time.monotonic() - started, 1), origin=f"http://127.0.0.1:{port}", shown=shown,
        requests=log["requests"], failed=log["failed"], console=log["console"],
        stored=[{"title": c.title, "messages": [(m.role, m.status, len(m.images)) for m in c.messages]}
                for c in conversations],
        audit=[json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else [])
    result_path.write_text(json.dumps(result, indent=1))


def cross_origin_probe(model_dir: Path, work: Path, result_path: Path) -> None:
    """One websocket handshake with a foreign Origin straight to the app port; the server's network attempts."""
    loopback_up()
    audit = work / "audit.jsonl"
    env = ds.app_env(model_dir, work / "data",
                     extra={"PYTHONPATH": str(ds.AUDIT_DIR), "VLASSIST_AUDIT_LOG": str(audit)})
    port = ds.free_port()
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "http://attacker.example",
               "Host": f"127.0.0.1:{port}"}
    with ds.streamlit_app(port, env, work / "app.log"):
        status = ds.http_get(port, "/_stcore/stream", headers, timeout=30)[0]
        time.sleep(2)
    result_path.write_text(json.dumps({
        "status": status, "interfaces": interfaces(),
        "audit": [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("result", type=Path)
    ap.add_argument("--cross-origin-probe", action="store_true")
    ap.add_argument("--timeout-ms", type=int, default=180_000)
    args = ap.parse_args()
    if args.cross_origin_probe:
        cross_origin_probe(args.model_dir, args.work, args.result)
    else:
        main(args.model_dir, args.work, args.result, args.timeout_ms)
