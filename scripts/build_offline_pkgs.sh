#!/usr/bin/env bash
# Download every wheel vlassist needs into offline_pkgs/ (run where there is internet), for an air-gapped
# Linux x86-64 machine with Python 3.11. Carry the folder (and models/) to it, then run scripts/install_offline.sh.
#
#   scripts/build_offline_pkgs.sh                 # CUDA build of torch (PyPI's default on Linux), + test tools
#   scripts/build_offline_pkgs.sh --variant cpu   # CPU-only torch (much smaller; for CPU machines)
#
# Options:
#   --variant cuda|cpu     which torch build (default cuda)
#   --dest DIR             where the wheels go (default offline_pkgs/)
#   --no-tests             leave out tests/requirements.txt (pytest, playwright, ...)
#   --torch-index URL      extra index for the CPU torch wheel (default https://download.pytorch.org/whl/cpu;
#                          "none" when your pip configuration already finds it, e.g. a local mirror)
#   --flash-attn SRC       a flash-attn wheel (file or URL) built for this torch, CUDA and Python 3.11;
#                          without it a prebuilt wheel is looked for on the index and skipped if none exists
#   --python-version X.Y   target Python (default 3.11)
#   --glibc 2.N            oldest glibc among the target machines (default 2.28, as torch's wheels need)
#   --resolve-only         list the wheels that would be downloaded (metadata only, seconds), download nothing
# Your pip configuration (index mirror, proxy, certificates) is used as is.
set -euo pipefail
cd "$(dirname "$0")/.."

variant=cuda dest=offline_pkgs tests=1 torch_index=https://download.pytorch.org/whl/cpu flash_attn="" pyver=3.11
glibc=2.28 resolve_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=$2; shift 2 ;;
    --dest) dest=$2; shift 2 ;;
    --no-tests) tests=0; shift ;;
    --torch-index) torch_index=$2; shift 2 ;;
    --flash-attn) flash_attn=$2; shift 2 ;;
    --python-version) pyver=$2; shift 2 ;;
    --glibc) glibc=$2; shift 2 ;;
    --resolve-only) resolve_only=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_offline_pkgs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$variant" in cuda|cpu) ;; *) echo "build_offline_pkgs.sh: --variant must be cuda or cpu" >&2; exit 2 ;; esac

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
abi="cp${pyver/./}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Requirements for the target, with torch pinned to the chosen build.
torch_pin=$(grep -E '^torch==' requirements.txt | head -n1)
if [ -z "$torch_pin" ]; then echo "build_offline_pkgs.sh: requirements.txt pins no torch" >&2; exit 1; fi
grep -vE '^torch==' requirements.txt > "$work/requirements.txt"
if [ "$variant" = cpu ]; then
  echo "${torch_pin%%+*}+cpu" >> "$work/requirements.txt"
else
  echo "${torch_pin%%+*}" >> "$work/requirements.txt"
fi
reqs=(-r "$work/requirements.txt")
[ "$tests" = 1 ] && reqs+=(-r tests/requirements.txt)

# Wheels only, for the target platform, whatever machine this runs on. pip does not widen an explicit
# --platform to older glibc versions, so every manylinux tag up to the target's glibc is listed.
target=(--only-binary=:all: --implementation cp --python-version "$pyver" --abi "$abi" --abi abi3 --abi none)
for ((minor = ${glibc#2.}; minor >= 17; minor--)); do target+=(--platform "manylinux_2_${minor}_x86_64"); done
target+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
extra=()
if [ "$variant" = cpu ] && [ "$torch_index" != none ]; then
  extra+=(--extra-index-url "$torch_index")
fi

if [ "$resolve_only" = 1 ]; then
  # The same resolution pip download would do, from metadata only.
  "$PY" -m pip install --disable-pip-version-check --quiet --dry-run --ignore-installed --target "$work/target" \
    --report "$work/report.json" "${target[@]}" "${extra[@]}" "${reqs[@]}"
  "$PY" - "$work/report.json" "$variant" <<'PYEOF'
import json, sys
report, variant = json.load(open(sys.argv[1])), sys.argv[2]
wheels = sorted(item["download_info"]["url"].rsplit("/", 1)[-1] for item in report["install"])
print("\n".join(wheels))
torch = [w for w in wheels if w.startswith("torch-")]
if not torch or (variant == "cuda") == ("+cpu" in torch[0]):
    sys.exit(f"build_offline_pkgs.sh: torch for --variant {variant} resolved to {torch or 'nothing'}")
print(f"{len(wheels)} wheels would be downloaded ({variant} torch: {torch[0]}).")
PYEOF
  exit 0
fi

mkdir -p "$dest"
echo "Downloading wheels ($variant torch, Python $pyver, Linux x86-64) into $dest/ ..."
"$PY" -m pip download --disable-pip-version-check --quiet --dest "$dest" "${target[@]}" "${extra[@]}" "${reqs[@]}"
# Test clients whose own pins conflict with ours are installed without them (tests/requirements-nodeps.txt).
if [ "$tests" = 1 ]; then
  "$PY" -m pip download --disable-pip-version-check --quiet --no-deps --dest "$dest" "${target[@]}" \
    -r tests/requirements-nodeps.txt
fi

# The torch wheel must be the build asked for: a local +cpu wheel must not stand in for the CUDA one.
torch_whl=$(ls "$dest"/torch-*.whl 2>/dev/null | sort | tail -n1 || true)
if [ -z "$torch_whl" ]; then echo "build_offline_pkgs.sh: no torch wheel was downloaded" >&2; exit 1; fi
if [ "$variant" = cuda ] && [[ "$(basename "$torch_whl")" == *+cpu* ]]; then
  echo "build_offline_pkgs.sh: got a CPU torch ($(basename "$torch_whl")) for --variant cuda;" \
       "your pip configuration prefers a local CPU wheel (check find-links)" >&2
  exit 1
fi

# Flash Attention 2 (CUDA only, optional): a given wheel, else a prebuilt one from the index if there is any.
if [ "$variant" = cuda ]; then
  fa_pin=$(grep -hoE 'flash-attn==[^ ]+' scripts/setup.sh | head -n1)
  if [ -n "$flash_attn" ]; then
    "$PY" -m pip download --disable-pip-version-check --quiet --no-deps --dest "$dest" "$flash_attn"
  elif ! "$PY" -m pip download --disable-pip-version-check --quiet --no-deps --dest "$dest" "${target[@]}" \
        "${fa_pin:-flash-attn}" 2>/dev/null; then
    echo "No prebuilt flash-attn wheel for this target on the index; vlassist will use PyTorch SDPA."
    echo "(Build one on a CUDA machine with 'pip wheel --no-build-isolation ${fa_pin:-flash-attn}' and pass --flash-attn.)"
  fi
fi

# A list of what is there, with hashes, so the copy can be checked on the other side.
(cd "$dest" && sha256sum -- *.whl > SHA256SUMS)
count=$(ls "$dest"/*.whl | wc -l)
size=$(du -sh "$dest" | cut -f1)
echo "$count wheels, $size in $dest/ (checksums in $dest/SHA256SUMS)."
echo "Carry $dest/ and models/ to the offline machine and run: scripts/install_offline.sh"
