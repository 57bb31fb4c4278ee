"""Download a Qwen-VL checkpoint into models/NAME on a machine with internet, verify it, write a manifest.

Run this where there is internet, then carry the folder to the offline workstation (see README).
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vlassist.checkpoint import missing_files  # noqa: E402

KNOWN = [
    "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen/Qwen2.5-VL-3B-Instruct",
    "Qwen/Qwen3-VL-2B-Instruct",
    "Qwen/Qwen3-VL-4B-Instruct",
    "Qwen/Qwen3-VL-8B-Instruct",
    "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen/Qwen2-VL-2B-Instruct",
    "Qwen/Qwen2.5-VL-7B-Instruct-AWQ",
    "Qwen/Qwen2.5-VL-32B-Instruct-AWQ",
    "Qwen/Qwen3-VL-8B-Instruct-FP8",
]
HOSTS = {"hf": ("huggingface.co", 443), "modelscope": ("www.modelscope.cn", 443)}
MANIFEST = "MANIFEST.sha256"
PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def check_internet(source: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when the download host cannot be reached."""
    host, port = HOSTS[source]
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except Exception as exc:  # refused, unreachable, name lookup failed, sockets forbidden: all mean "offline"
        raise SystemExit(
            f"fetch_model: cannot reach {host} ({exc}). This machine has no internet: run this script on one "
            "that does, then copy the models/ folder here (see README, 'Putting a model on an offline machine')."
        ) from None


def download(repo: str, dest: Path, source: str) -> None:
    """Download `repo` into `dest` from the Hugging Face Hub or ModelScope."""
    if source == "modelscope":
        try:
            from modelscope import snapshot_download as ms_download
        except ImportError:
            raise SystemExit("fetch_model: --source modelscope needs `pip install modelscope`") from None
        ms_download(repo, local_dir=str(dest), allow_patterns=PATTERNS)
    else:
        from huggingface_hub import snapshot_download

        snapshot_download(repo, local_dir=str(dest), allow_patterns=PATTERNS)


def write_manifest(folder: Path) -> Path:
    """Write a `sha256sum -c` compatible manifest of every file in `folder`."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder)
        if rel.parts[0].startswith("."):  # download caches
            continue
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {rel.as_posix()}")
    out = folder / MANIFEST
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def verify(folder: Path) -> list[str]:
    """Files listed in the manifest that are missing or differ (empty when the copy is intact)."""
    bad = []
    for line in (folder / MANIFEST).read_text(encoding="utf-8").splitlines():
        digest, _, rel = line.partition("  ")
        path = folder / rel
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(rel)
    return bad


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", nargs="?", default=KNOWN[0],
                    help=f"model id (default {KNOWN[0]}); known: {', '.join(KNOWN)}")
    ap.add_argument("--source", choices=sorted(HOSTS), default="hf", help="Hugging Face Hub (hf) or ModelScope")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--verify", action="store_true", help="only check an existing folder against its manifest")
    args = ap.parse_args(argv)
    dest = args.models_dir / args.repo.split("/")[-1]
    if args.verify:
        bad = verify(dest)
        print(f"{dest}: {'OK' if not bad else 'damaged: ' + ', '.join(bad)}")
        return 1 if bad else 0
    check_internet(args.source)
    download(args.repo, dest, args.source)
    missing = missing_files(dest)
    if missing:
        print(f"fetch_model: download incomplete, missing {', '.join(missing)}; run again to resume", file=sys.stderr)
        return 1
    manifest = write_manifest(dest)
    print(f"{args.repo} is complete in {dest} (manifest: {manifest.name}).")
    print("To carry it to the offline workstation:")
    print(f"  tar -C {dest.parent} -cf {dest.name}.tar {dest.name}        # then copy the .tar on a disk")
    print(f"  tar -C models -xf {dest.name}.tar                            # on the workstation, in the repo")
    print(f"  python scripts/fetch_model.py {args.repo} --verify          # checks every file's sha256")
    print(f"  VLASSIST_MODEL_DIR=models/{dest.name} ./scripts/run.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
