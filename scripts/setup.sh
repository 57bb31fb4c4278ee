#!/usr/bin/env bash
# Create .venv and install vlassist's pinned dependencies; extra arguments go to pip (e.g. -r tests/requirements.txt).
# With wheels in offline_pkgs/, installs from there with no index at all (an air-gapped machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if compgen -G "offline_pkgs/*.whl" >/dev/null; then
  PIP+=(--no-index --find-links offline_pkgs)
  # As scripts/install_offline.sh: these wheels only, whatever index or find-links this machine configures.
  unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL
  export PIP_CONFIG_FILE=/dev/null
fi
"${PIP[@]}" -r requirements.txt "$@"
# Flash Attention 2 is optional (SDPA is used without it); it compiles against CUDA, so only on request.
if [ "${VLASSIST_INSTALL_FLASH_ATTN:-0}" = "1" ] && ! .venv/bin/python -c "import flash_attn" 2>/dev/null; then
  "${PIP[@]}" --no-build-isolation flash-attn==2.8.3.post2 || echo "flash-attn did not install; vlassist will use SDPA"
fi
