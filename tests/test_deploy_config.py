"""The shipped deployment settings: .streamlit/config.toml as Streamlit reads it, nginx and systemd files."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys

import pytest
from deploy_support import ROOT

SERVICE = ROOT / "deploy" / "vlassist.service"
NGINX_SITE = ROOT / "deploy" / "nginx.conf"


OPTIONS = ["server.address", "server.port", "server.headless", "server.allowedHosts", "server.enableXsrfProtection",
           "server.maxUploadSize", "server.fileWatcherType", "server.runOnSave", "browser.gatherUsageStats",
           "client.showErrorDetails"]
READ_CONFIG = (
    "import json, sys\n"
    "from streamlit import config\n"
    "config.get_config_options(force_reparse=True)\n"
    "json.dump({k: config.get_option(k) for k in sys.argv[1:]}, sys.stdout)\n"
)


@pytest.fixture(scope="module")
def streamlit_config() -> dict:
    """The configuration Streamlit itself resolves when started from the repository root, as nested dicts."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".venv"), "PYTHONNOUSERSITE": "1"}
    out = subprocess.run([sys.executable, "-c", READ_CONFIG, *OPTIONS], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    nested: dict = {}
    for key, value in json.loads(out).items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    return nested


def nginx_directive(name: str) -> list[str]:
    """Every value of one directive in deploy/nginx.conf."""
    return re.findall(rf"^\s*{name}\s+([^;{{]+);", NGINX_SITE.read_text(), flags=re.M)


def service() -> configparser.ConfigParser:
    """deploy/vlassist.service parsed (repeated keys such as Environment= are kept, newline-joined)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str
    multi: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in SERVICE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line[1:-1]
            multi.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        multi[section].setdefault(key, []).append(value)
    for section, items in multi.items():
        parser[section] = {k: "\n".join(v) for k, v in items.items()}
    return parser


def test_app_binds_to_loopback_by_default(streamlit_config):
    """Streamlit listens on 127.0.0.1 only unless told otherwise."""
    assert streamlit_config["server"]["address"] == "127.0.0.1"


def test_app_runs_headless(streamlit_config):
    """The server never tries to open a browser."""
    assert streamlit_config["server"]["headless"] is True


def test_usage_statistics_are_off(streamlit_config):
    """No usage statistics are gathered (the browser would send them to Streamlit's servers)."""
    assert streamlit_config["browser"]["gatherUsageStats"] is False


def test_xsrf_protection_is_on(streamlit_config):
    """Uploads need the XSRF token that only the app's own page has."""
    assert streamlit_config["server"]["enableXsrfProtection"] is True


def test_file_watcher_is_off(streamlit_config):
    """The server never watches or reloads source files while serving."""
    assert streamlit_config["server"]["fileWatcherType"] == "none"
    assert streamlit_config["server"]["runOnSave"] is False


def test_error_details_are_hidden_from_users(streamlit_config):
    """Tracebacks and exception messages stay in the server log."""
    assert streamlit_config["client"]["showErrorDetails"] == "none"


def test_app_answers_only_to_loopback_host_names(streamlit_config):
    """Websocket Host names are limited to the loopback names (DNS rebinding cannot reach the app)."""
    assert set(streamlit_config["server"]["allowedHosts"]) == {"localhost", "127.0.0.1"}


def test_upload_limit_matches_nginx_body_size(streamlit_config):
    """nginx accepts exactly what the app accepts: maxUploadSize plus the 1 MiB multipart margin."""
    (body,) = nginx_directive("client_max_body_size")
    assert body.endswith("m")
    assert int(body[:-1]) == streamlit_config["server"]["maxUploadSize"] + 1


def test_nginx_forwards_to_the_configured_app_port(streamlit_config):
    """The nginx upstream is the address and port in the Streamlit config."""
    address = f'{streamlit_config["server"]["address"]}:{streamlit_config["server"]["port"]}'
    assert nginx_directive("server") == [address]


def test_nginx_sets_the_user_header_the_service_reads():
    """The header nginx fills with the signed-in user is the one the systemd unit tells the app to trust."""
    environment = dict(line.split("=", 1) for line in service()["Service"]["Environment"].splitlines())
    header = environment["VLASSIST_USER_HEADER"]
    assert f"{header} $remote_user" in nginx_directive("proxy_set_header")


def test_service_restarts_on_failure():
    """systemd restarts the app when it exits with an error."""
    assert service()["Service"]["Restart"] == "on-failure"


def test_service_waits_for_the_health_endpoint_on_the_app_port(streamlit_config):
    """The unit is started only once /_stcore/health answers on the port the app listens on."""
    post = service()["Service"]["ExecStartPost"]
    assert "deploy/healthcheck.py" in post
    assert f"--port {streamlit_config['server']['port']}" in post
    assert f"--server.port {streamlit_config['server']['port']}" in service()["Service"]["ExecStart"]


def test_service_may_reach_loopback_only():
    """The kernel drops any packet the service sends to or receives from another machine."""
    section = service()["Service"]
    assert section["IPAddressDeny"] == "any"
    assert section["IPAddressAllow"] == "localhost"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_service_units_pass_systemd_analyze_verify(tmp_path):
    """systemd accepts the units as written (paths pointed at this checkout)."""
    paths = []
    for name in ("vlassist.service", "vlassist-health.service", "vlassist-health.timer"):
        text = (ROOT / "deploy" / name).read_text()
        text = text.replace("/opt/vlassist/.venv/bin/python", sys.executable).replace("/opt/vlassist", str(ROOT))
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *paths], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_allowed_hosts_instruction_is_the_same_everywhere(streamlit_config):
    """nginx passes requests on with a Host the app allows, and no shipped file tells to add the intranet name to
    allowedHosts instead (the intranet name goes in nginx's server_name only)."""
    (host,) = nginx_directive("proxy_set_header Host")
    assert host.strip('"').rsplit(":", 1)[0] in streamlit_config["server"]["allowedHosts"]
    texts = [ROOT / "README.md", ROOT / ".streamlit" / "config.toml", *sorted((ROOT / "deploy").iterdir()),
             *sorted((ROOT / "docs").glob("*.md"))]
    telling = [p.name for p in texts if p.is_file() and re.search(
        r"STREAMLIT_SERVER_ALLOWED_HOSTS|--server\.allowedHosts|add the intranet name", p.read_text())]
    assert telling == []
