"""A newcomer's first run: setup.sh installs only when requirements changed; a missing model is reported at once.

setup.sh runs in a copy of the repository in a temporary folder, with a venv whose pip is this one's and a
wheelhouse of small local wheels, so nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT
from test_browser import CHROMIUM, serve, stop

STAMP = ".venv/.vlassist-requirements.sha256"


def make_wheel(folder: Path, name: str, version: str) -> None:
    """Write a pure-Python wheel of package `name` at `version` whose module records its version."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()}"
              f",{len(text.encode())}" for path, text in files.items()]
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)
        whl.writestr(f"{dist}/RECORD", "\n".join([*record, f"{dist}/RECORD,,"]) + "\n")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository copy holding setup.sh, a one-line requirements.txt, a local wheelhouse and an existing venv."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    (root / "offline_pkgs").mkdir()
    for name, version in [("demo_app", "1.0"), ("demo_app", "2.0"), ("demo_tool", "1.0")]:
        make_wheel(root / "offline_pkgs", name, version)
    (root / "requirements.txt").write_text("# pinned\ndemo_app==1.0\n")
    (root / "tests").mkdir()
    (root / "tests" / "requirements.txt").write_text("demo_tool==1.0\n")
    # A venv without its own pip (seconds saved); this interpreter's pip is put on its path instead.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")], check=True)
    [site] = (root / ".venv" / "lib").glob("python3*/site-packages")
    (site / "pip_from_tests.pth").write_text(str(Path(importlib.util.find_spec("pip").origin).parent.parent) + "\n")
    return root


def setup(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the copy's setup.sh with pip's own variables and configuration left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VLASSIST_", "VIRTUAL_ENV"))}
    result = subprocess.run([str(repo / "scripts" / "setup.sh"), *args], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def installed(repo: Path, name: str) -> str | None:
    """The version of `name` installed in the copy's venv, or None."""
    code = f"import importlib.metadata as m\ntry: print(m.version({name!r}))\nexcept m.PackageNotFoundError: print('')"
    out = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    return out or None


def test_setup_skips_pip_when_requirements_are_unchanged(repo):
    """A second setup.sh with the same requirements succeeds without running pip (here pip is then unavailable)."""
    first = setup(repo)
    assert "installing 1 requirements from offline_pkgs/" in first.stdout and "done in" in first.stdout
    assert installed(repo, "demo_app") == "1.0" and (repo / STAMP).is_file()
    next((repo / ".venv" / "lib").glob("python3*/site-packages/pip_from_tests.pth")).unlink()  # pip would now fail
    again = setup(repo)
    assert "pip skipped" in again.stdout and "installing" not in again.stdout


def test_setup_reinstalls_when_requirements_txt_changes(repo):
    """A changed requirements.txt makes setup.sh run pip again, installing the new pin."""
    setup(repo)
    (repo / "requirements.txt").write_text("# pinned\ndemo_app==2.0\n")
    result = setup(repo)
    assert "installing 1 requirements" in result.stdout and "pip skipped" not in result.stdout
    assert installed(repo, "demo_app") == "2.0"


def test_setup_reinstalls_when_an_extra_requirements_file_changes(repo):
    """test.sh's extra -r file is part of the hash: changing its contents runs pip again."""
    setup(repo, "-r", "tests/requirements.txt")
    assert installed(repo, "demo_tool") == "1.0"
    (repo / "tests" / "requirements.txt").write_text("demo_tool==1.0\ndemo_app==1.0\n")
    result = setup(repo, "-r", "tests/requirements.txt")
    assert "installing 3 requirements" in result.stdout


def test_plain_and_test_installs_both_stay_current(repo):
    """After run.sh's install (no arguments) and test.sh's (-r tests/requirements.txt), neither runs pip again."""
    setup(repo)
    setup(repo, "-r", "tests/requirements.txt")
    assert "pip skipped" in setup(repo).stdout
    assert "pip skipped" in setup(repo, "-r", "tests/requirements.txt").stdout


# The CLI's own entry point, then whether torch was imported on the way.
WRAPPER = ("import sys\nfrom vlassist.__main__ import main\ncode = main(sys.argv[1:])\n"
           "print('torch imported:', 'torch' in sys.modules)\nsys.exit(code)")


@pytest.mark.parametrize("command", ["ask", "info"])
def test_cli_reports_a_missing_model_without_importing_torch(command, tmp_path, png_file):
    """`ask` and `info` with no model folder exit 2 with one line naming it, and never import torch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env["VLASSIST_MODEL_DIR"] = str(tmp_path / "absent")
    args = [command, str(png_file), "-p", "What is this?"] if command == "ask" else [command]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    print(f"\n{command} with a missing model answered in {time.monotonic() - started:.2f} s")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"no model folder at {tmp_path / 'absent'}" in done.stderr
    assert "torch imported: False" in done.stdout


APP_TEST = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("qwen_vl_app.py", default_timeout=120).run()
print("exception:", bool(at.exception))
print("info:", " | ".join(box.value for box in at.info))
print("torch imported:", "torch" in sys.modules)
"""


def test_page_shows_no_model_found_without_importing_torch(tmp_path):
    """With no model folder the page shows the 'No model found' explanation, and torch is never imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env.update(VLASSIST_MODEL_DIR=str(tmp_path / "absent"), VLASSIST_DATA_DIR=str(tmp_path / "data"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", APP_TEST], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    print(f"\npage run with a missing model (interpreter start included): {time.monotonic() - started:.2f} s")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exception: False" in done.stdout
    assert "No model found" in done.stdout and str(tmp_path / "absent") in done.stdout
    assert "torch imported: False" in done.stdout


def test_no_model_page_lists_the_checkpoints_in_the_models_folder(tmp_path, tiny_qwen25):
    """With VLASSIST_MODEL_DIR naming a missing folder, the 'No model found' page lists the checkpoints beside it
    (the models folder), each with the VLASSIST_MODEL_DIR value that would load it; torch is still not imported."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "qwen25-tiny").symlink_to(tiny_qwen25, target_is_directory=True)
    (models / "not-a-checkpoint").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLASSIST_")}
    env.update(VLASSIST_MODEL_DIR=str(models / "absent"), VLASSIST_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", APP_TEST], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "No model found" in done.stdout and f"Checkpoints found in `{models}`" in done.stdout
    assert f"`qwen25-tiny` (qwen2_5_vl): `VLASSIST_MODEL_DIR={models / 'qwen25-tiny'}`" in done.stdout
    assert "not-a-checkpoint" not in done.stdout
    assert "torch imported: False" in done.stdout


@pytest.mark.enable_socket
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")
def test_browser_shows_no_model_found_and_the_server_never_loads_torch(browser, tmp_path):
    """In Chromium, a server without a model shows 'No model found'; the server process has no torch library mapped."""
    data = tmp_path / "data"
    data.mkdir()
    started = time.monotonic()
    proc, url, log = serve(tmp_path / "absent", data)
    context = browser.new_context()
    try:
        serving = time.monotonic()
        tab = context.new_page()
        tab.goto(url)
        tab.get_by_text("No model found").wait_for(timeout=120_000)
        shown = time.monotonic()
        print(f"\nserver start to serving {serving - started:.1f} s, to 'No model found' in Chromium "
              f"{shown - started:.1f} s")
        assert str(tmp_path / "absent") in tab.locator('[data-testid="stAlert"]').inner_text()
        maps = Path(f"/proc/{proc.pid}/maps").read_text()  # the shared libraries the server process has loaded
        assert "libtorch" not in maps and "libc10" not in maps
    finally:
        context.close()
        stop(proc, log)


def test_setup_installs_the_vlassist_command_that_runs_from_any_folder(repo, tmp_path):
    """setup.sh installs this checkout as the `vlassist` command in .venv/bin, which works from another folder."""
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "README.md").write_text("readme\n")
    (repo / "vlassist").mkdir()
    (repo / "vlassist" / "__init__.py").write_text('__version__ = "0.0.1"\n')
    (repo / "vlassist" / "__main__.py").write_text("def main(argv=None):\n    print('vlassist ran')\n    return 0\n")
    result = setup(repo)
    assert "installing the vlassist command" in result.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ran = subprocess.run([str(repo / ".venv" / "bin" / "vlassist")], cwd=elsewhere, capture_output=True, text=True,
                         timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert ran.returncode == 0 and ran.stdout.strip() == "vlassist ran", ran.stderr
    assert "installing the vlassist command" not in setup(repo).stdout  # installed once
