#!/usr/bin/env bash
# Install vlassist on a machine without internet from the wheels in offline_pkgs/ (see build_offline_pkgs.sh).
# pip gets no index and no configuration at all: only the wheels in the folder are used, nothing is fetched.
#
#   scripts/install_offline.sh                      # .venv with the app's and the tests' requirements
#   scripts/install_offline.sh --no-tests           # the app's requirements only
#   scripts/install_offline.sh --venv DIR --wheels DIR
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv wheels=offline_pkgs tests=1
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --no-tests) tests=0; shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install_offline.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ! compgen -G "$wheels/*.whl" >/dev/null; then
  echo "install_offline.sh: no wheels in $wheels/; build them where there is internet with scripts/build_offline_pkgs.sh" >&2
  exit 1
fi
if [ -f "$wheels/SHA256SUMS" ]; then
  echo "Checking wheels against $wheels/SHA256SUMS ..."
  (cd "$wheels" && sha256sum --quiet --check SHA256SUMS)
fi

# No PIP_* variables and no pip.conf: an index or find-links configured on this machine must not take part.
for name in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$name"; done
export PIP_CONFIG_FILE=/dev/null

PYTHON=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
PIP=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels")
reqs=(-r requirements.txt)
[ "$tests" = 1 ] && reqs+=(-r tests/requirements.txt)
# The wheelhouse may hold torch as 2.13.0+cpu or 2.13.0 (CUDA); either satisfies requirements.txt's pin.
"${PIP[@]}" "${reqs[@]}"
# A Flash Attention 2 wheel, if the wheelhouse has one built for this torch.
fa=$(ls "$wheels"/flash_attn-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$fa" ]; then
  "${PIP[@]}" --no-deps "$fa" || echo "flash-attn did not install; vlassist will use SDPA"
fi
"$venv/bin/python" -m pip check --disable-pip-version-check
"$venv/bin/python" -c "import torch, transformers, streamlit, sqlalchemy, vlassist; print('vlassist installed offline:', 'torch', torch.__version__, '| transformers', transformers.__version__, '| streamlit', streamlit.__version__)"
