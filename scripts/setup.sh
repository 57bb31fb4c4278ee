#!/usr/bin/env bash
# Create .venv and install vlassist's pinned dependencies; extra arguments go to pip (e.g. -r tests/requirements.txt).
# With wheels in offline_pkgs/, installs from there with no index at all (an air-gapped machine).
# pip runs only when something changed: each successful install leaves a hash of the requirement files' contents,
# the extra arguments and the Python version in .venv/.vlassist-requirements.sha256 (delete it to force pip).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.vlassist-requirements.sha256
started=$SECONDS
say() { echo "setup.sh: $*"; }

# stamp check|save [pip arguments]: `check` prints how many requirements there are and succeeds when an earlier
# install covered exactly these; `save` records this install, keeping the earlier ones it cannot have undone
# (those made of a subset of its files and arguments: run.sh's set and test.sh's larger one both stay current).
stamp() {
  .venv/bin/python - "$STAMP" "$@" <<'PY'
import hashlib, os, re, sys
from pathlib import Path

path, mode, *args = sys.argv[1:]
items, seen, count = {"python " + sys.version}, set(), 0
if os.environ.get("VLASSIST_INSTALL_FLASH_ATTN", "0") == "1":
    items.add("flash-attn")
OPTION = re.compile(r"(-r|--requirement|-c|--constraint)=?(.*)")


def add(name, requirements):
    global count
    file = Path(name)
    if file in seen:
        return
    seen.add(file)
    try:
        text = file.read_bytes()
    except OSError:
        items.add(f"unreadable {file}")  # matches no earlier install: pip runs and reports it
        return
    items.add(f"file {file} {hashlib.sha256(text).hexdigest()}")
    for line in text.decode(errors="replace").splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        nested = OPTION.fullmatch(line.replace(" ", "", 1)) if line.startswith("-") else None
        if nested:
            add(file.parent / nested.group(2).strip(), nested.group(1) in ("-r", "--requirement"))
        elif line and requirements and not line.startswith("-"):
            count += 1


add("requirements.txt", True)
i = 0
while i < len(args):
    option = OPTION.fullmatch(args[i])
    if option and option.group(2):
        add(option.group(2), option.group(1) in ("-r", "--requirement"))
    elif option and i + 1 < len(args):
        i += 1
        add(args[i], option.group(1) in ("-r", "--requirement"))
    else:
        items.add("arg " + args[i])
        count += not args[i].startswith("-")
    i += 1

digest = {item: hashlib.sha256(item.encode()).hexdigest() for item in items}
key = hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()
try:
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
except OSError:
    lines = []
if mode == "check":
    print(count)
    sys.exit(0 if any(line[0] == key for line in lines) else 1)
mine = set(digest.values())
kept = [line for line in lines if line[0] != key and set(line[1:]) <= mine]
Path(path).write_text("".join(" ".join(line) + "\n" for line in [*kept, [key, *sorted(mine)]]))
PY
}

# The `vlassist` command (README) from any folder: this checkout installed into .venv in editable mode, without
# touching the pinned dependencies and without any index (the venv's own setuptools builds it).
install_package() {
  [ -f pyproject.toml ] || return 0
  if [ -x .venv/bin/vlassist ] && .venv/bin/python -c "import vlassist" 2>/dev/null; then
    return 0
  fi
  say "installing the vlassist command into .venv (editable: it runs this checkout) ..."
  .venv/bin/python -m pip install --disable-pip-version-check --quiet --no-deps --no-index --no-build-isolation \
    -e . || { say "could not install the vlassist command; use .venv/bin/python -m vlassist from here"; return 1; }
}

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PYTHON" --version 2>&1) ..."
  "$PYTHON" -m venv .venv
fi
if count=$(stamp check "$@"); then
  say "$count requirements already installed (unchanged since the last install, $STAMP); pip skipped"
  install_package
  exit 0
fi

PIP=(.venv/bin/python -m pip install --disable-pip-version-check)
from="the package index (PyPI unless pip is configured otherwise)"
if compgen -G "offline_pkgs/*.whl" >/dev/null; then
  PIP+=(--no-index --find-links offline_pkgs)
  from="offline_pkgs/ (wheels only, no index)"
  # As scripts/install_offline.sh: these wheels only, whatever index or find-links this machine configures.
  unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL
  export PIP_CONFIG_FILE=/dev/null
fi
say "installing $count requirements from $from ..."
"${PIP[@]}" -r requirements.txt "$@"
# Flash Attention 2 is optional (SDPA is used without it); it compiles against CUDA, so only on request.
if [ "${VLASSIST_INSTALL_FLASH_ATTN:-0}" = "1" ] && ! .venv/bin/python -c "import flash_attn" 2>/dev/null; then
  say "building flash-attn (VLASSIST_INSTALL_FLASH_ATTN=1; compiles against CUDA, can take a long time) ..."
  "${PIP[@]}" --no-build-isolation flash-attn==2.8.3.post2 ||
    say "flash-attn did not install; vlassist will use SDPA (delete $STAMP to try again)"
fi
stamp save "$@"
install_package
say "done in $((SECONDS - started)) s"
