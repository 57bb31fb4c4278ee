#!/usr/bin/env bash
# Set up (first run) and run the whole test suite with network sockets disabled; arguments go to pytest.
# 1,045 tests: 21 minutes measured on a 2-core machine, the wheelhouse proof included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh -r tests/requirements.txt
# Clients whose own pins conflict with ours (tests/requirements-nodeps.txt says why): without their dependencies.
nodeps=(.venv/bin/python -m pip install --disable-pip-version-check --quiet --no-deps)
compgen -G "offline_pkgs/*.whl" >/dev/null && nodeps+=(--no-index --find-links offline_pkgs)
"${nodeps[@]}" -r tests/requirements-nodeps.txt
# Browser and proxy tests use Debian's chromium and nginx; install them where we may.
need=()
command -v chromium >/dev/null || need+=(chromium chromium-driver)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || need+=(fonts-wqy-zenhei)  # CJK box labels
command -v openssl >/dev/null || need+=(openssl)  # test certificate for the nginx TLS tests
command -v curl >/dev/null || need+=(curl)  # runs the README's curl example against the API
command -v unshare >/dev/null || need+=(util-linux)  # network-namespace tests
command -v systemd-analyze >/dev/null || need+=(systemd)  # checks deploy/*.service
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The air-gapped install proof (build the wheelhouse, install it with no network, run tests there): about 5 min
# on two cores with pip's cache warm (4 min 52 s measured), up to ~7 min on a busy machine.
export VLASSIST_WHEELHOUSE_PROOF=${VLASSIST_WHEELHOUSE_PROOF:-1}
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider --disable-socket --allow-unix-socket "$@"
