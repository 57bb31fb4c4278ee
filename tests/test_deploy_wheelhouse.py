"""The air-gapped install, for real: build the wheelhouse (CPU torch), install it into a fresh venv inside a network
namespace with no interface, and run a focused set of the tests with that venv, still without network.

Heavy (a few minutes: about 700 MB of wheels unpacked), so it runs when VLASSIST_WHEELHOUSE_PROOF=1, which
scripts/test.sh sets. The build reuses pip's cache and the machine's pip configuration (on the CI machine that
configuration supplies the CPU torch wheel from local disk; elsewhere set VLASSIST_TORCH_CPU_INDEX to an index
that has it, e.g. https://download.pytorch.org/whl/cpu).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import deploy_support as ds
import pytest
from test_deploy_netns import NETNS

# Representative tests for the offline venv: settings, image intake, the engine on the tiny checkpoint (torch,
# transformers), history (SQLAlchemy) and app flows (Streamlit AppTest), deployment settings.
FOCUSED = ["tests/test_config.py", "tests/test_images.py", "tests/test_history.py", "tests/test_app.py",
           "tests/test_deploy_config.py"]

pytestmark = [
    pytest.mark.wheelhouse,
    pytest.mark.skipif(os.environ.get("VLASSIST_WHEELHOUSE_PROOF") != "1",
                       reason="the wheelhouse proof runs from scripts/test.sh (VLASSIST_WHEELHOUSE_PROOF=1)"),
    pytest.mark.skipif(NETNS is None, reason="cannot create a network namespace here"),
]


def run(cmd: list[str], **kw) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command from the repository root; return the result and its wall time."""
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=ds.ROOT, capture_output=True, text=True, **kw)
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """scripts/build_offline_pkgs.sh --variant cpu into a temporary folder (this step may use the network)."""
    dest = tmp_path_factory.mktemp("wheelhouse") / "offline_pkgs"
    index = os.environ.get("VLASSIST_TORCH_CPU_INDEX", "none")
    result, seconds = run(["scripts/build_offline_pkgs.sh", "--variant", "cpu", "--torch-index", index,
                           "--dest", str(dest)], timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"\nwheelhouse built in {seconds:.0f} s")
    return dest


@pytest.fixture(scope="module")
def offline_install(wheelhouse, tmp_path_factory):
    """scripts/install_offline.sh into a fresh venv, inside a network namespace with no interface."""
    venv = tmp_path_factory.mktemp("offline") / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    result, seconds = run([*NETNS, "scripts/install_offline.sh", "--venv", str(venv), "--wheels", str(wheelhouse)],
                          env=env, timeout=1800)
    print(f"\noffline install in {seconds:.0f} s")
    return result, venv


def test_wheelhouse_holds_only_wheels_for_linux_x86_64_python_311(wheelhouse):
    """Nothing to build on the offline machine: every file is a wheel that installs on CPython 3.11, x86-64."""
    wheels = sorted(p.name for p in wheelhouse.iterdir() if p.name != "SHA256SUMS")
    assert wheels and all(name.endswith(".whl") for name in wheels)
    for name in wheels:
        python, abi, platform = name[:-4].split("-")[-3:]
        assert re.fullmatch(r"(py3|py2\.py3|cp3\d*|py3\d*)(\.\S+)?", python), name
        assert abi in ("none", "abi3", "cp311"), name
        assert platform == "any" or "x86_64" in platform, name


def test_wheelhouse_torch_is_the_pinned_cpu_build(wheelhouse):
    """--variant cpu brings requirements.txt's torch version as the +cpu build."""
    pin = re.search(r"^torch==(\S+)", (ds.ROOT / "requirements.txt").read_text(), flags=re.M).group(1)
    (torch,) = [p.name for p in wheelhouse.glob("torch-*.whl")]
    assert torch.startswith(f"torch-{pin}+cpu-")


def test_fresh_venv_installs_from_the_wheelhouse_without_network(offline_install):
    """install_offline.sh succeeds with no network interface: no index, no pip configuration, wheels only."""
    result, _ = offline_install
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "vlassist installed offline" in result.stdout


def test_offline_venv_has_every_pinned_version(offline_install):
    """The fresh venv holds exactly the versions pinned in requirements.txt and tests/requirements.txt."""
    result, venv = offline_install
    assert result.returncode == 0
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                            text=True, check=True, env={"PIP_CONFIG_FILE": os.devnull}).stdout.lower()
    installed = {re.sub(r"[-_.]+", "-", name): version
                 for name, version in (line.split("==", 1) for line in freeze.splitlines() if "==" in line)}
    for path in ("requirements.txt", "tests/requirements.txt"):
        for line in (ds.ROOT / path).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                name, version = line.split("#")[0].strip().lower().split("==")
                name = name.split("[")[0]  # extras (pkg[extra]) name the same distribution
                assert installed.get(re.sub(r"[-_.]+", "-", name), "").split("+")[0] == version, (name, version)


def test_focused_tests_pass_in_the_offline_venv_without_network(offline_install):
    """The tests that exercise torch, transformers, Streamlit and SQLAlchemy pass with the offline venv, inside a
    network namespace with no interface."""
    result, venv = offline_install
    assert result.returncode == 0
    files = [f for f in FOCUSED if (ds.ROOT / f).exists()]
    assert files, "none of the focused test files exists"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLASSIST_", "VIRTUAL_ENV", "PIP_"))}
    tests, seconds = run([*NETNS, str(venv / "bin" / "python"), "-m", "pytest", *files, "-q", "-p",
                          "no:cacheprovider", "--disable-socket", "--allow-unix-socket"], env=env, timeout=1800)
    print(f"\nfocused tests in the offline venv: {seconds:.0f} s: {tests.stdout.strip().splitlines()[-1:]}")
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert re.search(r"\d+ passed", tests.stdout)


def test_cuda_wheelhouse_resolves_to_the_cuda_torch_build():
    """The default (CUDA) wheelhouse resolves, from plain PyPI, to wheels only with PyPI's CUDA torch and its
    nvidia-* libraries (metadata only: the 3 GB are not downloaded here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's local CPU wheels must not stand in
    result, seconds = run(["scripts/build_offline_pkgs.sh", "--resolve-only"], env=env, timeout=900)
    print(f"\nCUDA wheelhouse resolved in {seconds:.0f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = [line for line in result.stdout.splitlines() if line.endswith(".whl")]
    pin = re.search(r"^torch==(\S+)", (ds.ROOT / "requirements.txt").read_text(), flags=re.M).group(1)
    assert f"torch-{pin}-cp311-cp311-manylinux_2_28_x86_64.whl" in wheels
    assert any(w.startswith("nvidia_cudnn") for w in wheels)
