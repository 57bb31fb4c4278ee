"""The wheelhouse scripts' own checks, which need neither network nor wheels."""

from __future__ import annotations

import subprocess

from deploy_support import ROOT


def run(*cmd: str) -> subprocess.CompletedProcess:
    """Run a repository script and capture its output."""
    return subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_install_offline_refuses_an_empty_wheelhouse(tmp_path):
    """Without wheels install_offline.sh stops with a message naming the build script, creating no venv."""
    result = run("scripts/install_offline.sh", "--wheels", str(tmp_path), "--venv", str(tmp_path / "venv"))
    assert result.returncode == 1 and "build_offline_pkgs.sh" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_install_offline_refuses_a_corrupted_wheel(tmp_path):
    """A wheel whose bytes differ from SHA256SUMS stops the install before any venv is made."""
    (tmp_path / "demo-1.0-py3-none-any.whl").write_bytes(b"original")
    subprocess.run("sha256sum -- *.whl > SHA256SUMS", shell=True, cwd=tmp_path, check=True)
    (tmp_path / "demo-1.0-py3-none-any.whl").write_bytes(b"changed on the way")
    result = run("scripts/install_offline.sh", "--wheels", str(tmp_path), "--venv", str(tmp_path / "venv"))
    assert result.returncode != 0
    assert not (tmp_path / "venv").exists()


def test_build_offline_pkgs_rejects_an_unknown_variant(tmp_path):
    """An unknown --variant is refused with exit status 2 before anything is downloaded."""
    result = run("scripts/build_offline_pkgs.sh", "--variant", "rocm", "--dest", str(tmp_path / "w"))
    assert result.returncode == 2 and "--variant" in result.stderr
    assert not (tmp_path / "w").exists()
