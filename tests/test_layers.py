"""The layers hold: torch/transformers only in the engine, streamlit only in the UI, and ruff passes."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "vlassist"


def imported_roots(path) -> set[str]:
    """Top-level names of every module a file imports (at any depth in the file)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def offenders(names: set[str], allowed_dir) -> list[str]:
    """Package files outside `allowed_dir` that import any of `names`."""
    return sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                  if allowed_dir not in p.parents and imported_roots(p) & names)


def test_only_the_engine_imports_torch_or_transformers():
    """No module outside vlassist/engine/ imports torch or transformers."""
    assert offenders({"torch", "transformers", "xgrammar"}, PACKAGE / "engine") == []


def test_only_the_ui_imports_streamlit():
    """No module outside vlassist/ui/ imports streamlit."""
    assert offenders({"streamlit"}, PACKAGE / "ui") == []


def test_no_module_is_over_four_hundred_lines():
    """Every module stays small enough to read in one sitting."""
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_ruff_passes():
    """`ruff check` with the project's settings finds nothing."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
