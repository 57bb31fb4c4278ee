"""Whole sessions inside a network namespace that has no network interface but loopback: nothing can leave the
machine, so a session that succeeds there needs no network; an audit hook records any attempt anyway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import deploy_support as ds
import pytest
from conftest import image_bytes


def _netns_prefix() -> list[str] | None:
    """The command prefix that runs a program in a new, empty network namespace, or None if we may not."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--net", "--map-root-user"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


NETNS = _netns_prefix()
pytestmark = pytest.mark.skipif(NETNS is None, reason="cannot create a network namespace here (unshare --net "
                                                      "needs root or unprivileged user namespaces)")


def audit_env(log: Path) -> dict:
    """Environment that loads the network audit hook (tests/deploy_audit) into every Python process."""
    return {**os.environ, "PYTHONPATH": str(ds.AUDIT_DIR), "VLASSIST_AUDIT_LOG": str(log)}


def events(log: Path) -> list[dict]:
    """The audit log's events, the hook's own start markers left out."""
    return [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] != "audit.start"]


@pytest.fixture(scope="module")
def cli_run(tiny_qwen25, tmp_path_factory):
    """`python -m vlassist ask` with an image and two questions, in a namespace with no usable interface."""
    folder = tmp_path_factory.mktemp("netns_cli")
    image = folder / "screen.png"
    image.write_bytes(image_bytes((96, 64)))
    log = folder / "audit.jsonl"
    result = subprocess.run(
        [*NETNS, sys.executable, "-m", "vlassist", "ask", "--model", str(tiny_qwen25), str(image), "-p",
         "Read all text", "-p", "And the total?", "--max-new-tokens", "24", "--json-stats"],
        cwd=ds.ROOT, env={**audit_env(log), "VLASSIST_DEVICE": "cpu"}, capture_output=True, text=True,
        timeout=600)
    return result, log


def test_cli_session_succeeds_without_any_network(cli_run):
    """Loading the model and answering two questions works with no network interface at all."""
    result, _ = cli_run
    assert result.returncode == 0, result.stderr
    stats = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert len(stats) == 2 and all(s["new_tokens"] > 0 for s in stats)


def test_cli_session_attempts_no_connection(cli_run):
    """The CLI process opens no connection and looks up no host name, not even on loopback."""
    _, log = cli_run
    assert log.exists(), "the audit hook did not run"
    assert events(log) == []


@pytest.fixture(scope="module")
def app_session(tiny_qwen25, tmp_path_factory):
    """tests/deploy_netns_session.py in a fresh namespace: app start, model load, Chromium asks, answer stored."""
    if not os.path.exists(ds.CHROMIUM):
        pytest.skip("Debian chromium is not installed")
    folder = tmp_path_factory.mktemp("netns_app")
    result_file = folder / "result.json"
    run = subprocess.run([*NETNS, sys.executable, str(ds.ROOT / "tests" / "deploy_netns_session.py"),
                          str(tiny_qwen25), str(folder), str(result_file)], cwd=ds.ROOT,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n{ds.tail(folder / 'app.log')}"
    return json.loads(result_file.read_text())


def test_namespace_has_no_interface_but_loopback(app_session):
    """The session really ran where no packet can leave: loopback is the only interface."""
    assert app_session["interfaces"] == ["lo"]


def test_app_session_answers_and_stores_without_network(app_session):
    """Start, load, ask with an image in the browser, stream the answer and store both turns — all offline."""
    assert ds.ANSWER_DONE.search(app_session["shown"]["answer"])
    (conversation,) = app_session["stored"]
    assert conversation["messages"] == [["user", "complete", 1], ["assistant", "complete", 0]]


def test_browser_requests_stay_on_the_app_origin(app_session):
    """Every request the page made during the session went to the app's own origin."""
    requests = app_session["requests"]
    assert requests, "no requests were recorded"
    assert [url for url in requests if not ds.same_origin(url, app_session["origin"])] == []


def test_app_server_attempts_no_connection_off_the_machine(app_session):
    """The Streamlit server process connected to and looked up loopback only (usually nothing at all)."""
    audit = app_session["audit"]
    assert any(e["event"] == "audit.start" for e in audit), "the audit hook did not run in the app"
    assert [e for e in audit if e["event"] != "audit.start" and not ds.is_loopback_target(e["host"])] == []


@pytest.fixture(scope="module")
def cross_origin_probe(tiny_qwen25, tmp_path_factory):
    """A websocket handshake from a foreign Origin sent straight to the app port (as any web page open in the
    user's browser could), inside a namespace where nothing can actually leave."""
    folder = tmp_path_factory.mktemp("netns_probe")
    result_file = folder / "result.json"
    run = subprocess.run([*NETNS, sys.executable, str(ds.ROOT / "tests" / "deploy_netns_session.py"),
                          str(tiny_qwen25), str(folder), str(result_file), "--cross-origin-probe"], cwd=ds.ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{run.stderr[-3000:]}\n{ds.tail(folder / 'app.log')}"
    return json.loads(result_file.read_text())


def test_cross_origin_websocket_is_refused(cross_origin_probe):
    """The app refuses a websocket handshake whose Origin is another site."""
    assert cross_origin_probe["status"] == 403


def test_refusing_a_cross_origin_websocket_attempts_no_connection_off_the_machine(cross_origin_probe):
    """While refusing a foreign Origin, the server neither connects to nor looks up any host off the machine."""
    audit = cross_origin_probe["audit"]
    assert any(e["event"] == "audit.start" for e in audit), "the audit hook did not run in the app"
    assert [e for e in audit if e["event"] != "audit.start" and not ds.is_loopback_target(e["host"])] == []
