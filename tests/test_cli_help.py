"""`python -m vlassist SUBCOMMAND --help` names the default of every option that has one."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from vlassist.__main__ import _parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _defaults(parser: argparse.ArgumentParser) -> list[tuple[str, object]]:
    """(option, default) for every option that has a default (flags that are off are not defaults to show)."""
    return [(a.option_strings[-1], a.default) for a in parser._actions
            if a.option_strings and a.default not in (None, False, argparse.SUPPRESS)]


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_help_shows_every_default(command):
    """Every option of the subcommand that has a default shows "(default: VALUE)" in its --help."""
    out = subprocess.run([sys.executable, "-m", "vlassist", command, "--help"], capture_output=True, text=True,
                         env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"}, check=True).stdout
    lines: dict[str, str] = {}  # option -> its whole help entry (a long option's help starts on the next line)
    current = None
    for line in out.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            current = next((w.rstrip(",") for w in line.split() if w.startswith("--")), current)
            lines[current] = line
        elif current is not None:
            lines[current] += " " + line.strip()
    defaults = _defaults(_subcommands()[command])
    missing = [option for option, default in defaults if f"(default: {default}" not in lines.get(option, "")]
    assert missing == [], out


def test_serve_help_names_host_and_port_defaults():
    """`serve --help` names the address and port it binds to by default."""
    out = subprocess.run([sys.executable, "-m", "vlassist", "serve", "--help"], capture_output=True, text=True,
                         env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert "(default: 127.0.0.1" in out and "(default: 8000)" in out
