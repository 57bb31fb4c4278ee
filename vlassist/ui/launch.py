"""Start the Streamlit server for qwen_vl_app.py with its off-machine address lookups disabled.

Streamlit, when it refuses a websocket from a foreign Origin (or prints its URLs), looks up "the machine's own
addresses" with a UDP connect to 8.8.8.8 and an HTTP request to checkip.amazonaws.com. An offline tool must
never do that, and a refused handshake can come before any page has run, so the lookups are disabled here, in
the server process, before Streamlit starts. `python -m vlassist.ui.launch [streamlit options]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamlit import net_util

APP = Path(__file__).resolve().parent.parent.parent / "qwen_vl_app.py"


def _no_address() -> None:
    """Stand-in for Streamlit's IP lookups: the answer is always 'unknown', found without any network."""
    return None


def keep_local() -> None:
    """Make Streamlit's own-address lookups answer 'unknown' instead of asking hosts off the machine."""
    net_util.get_internal_ip = _no_address
    net_util.get_external_ip = _no_address


def main(argv: list[str] | None = None) -> int:
    """Run `streamlit run qwen_vl_app.py` with the given extra options, lookups disabled."""
    from streamlit.web import cli

    from vlassist.ui import readiness

    keep_local()
    readiness.install_route()  # GET /_vlassist/ready; the model starts loading with the server
    return cli.main(["run", str(APP), *(sys.argv[1:] if argv is None else argv)], prog_name="streamlit")


if __name__ == "__main__":
    sys.exit(main())
