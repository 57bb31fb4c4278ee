"""The command line's help format: every option that has a default says it, "(default: …)"."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: VALUE)" to an option's help unless its help already names the default; flags that are off
    by default and options with no default (None) are left as they are."""

    def _get_help_string(self, action: argparse.Action) -> str:
        """The option's help with its default appended."""
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default is argparse.SUPPRESS
                or "(default" in text or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)".lstrip()

    def _format_action(self, action: argparse.Action) -> str:
        """As argparse formats it, but an option without help text still shows its default."""
        if not action.help and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            action.help = " "  # argparse prints no help line for an empty help; the default follows the space
        return super()._format_action(action)


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose help, and its subcommands' help, shows every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
