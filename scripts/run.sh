#!/usr/bin/env bash
# Set up (first run) and start the vlassist app on http://127.0.0.1:8501; arguments go to Streamlit, e.g.
#   ./scripts/run.sh --server.port 8600
# Later starts skip pip unless the requirements changed (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m vlassist.ui.launch "$@"  # streamlit run qwen_vl_app.py, kept off the network
