"""Standard-library-only start-up for `runner.py` on a Python that lacks the runner's own dependencies
(rich, jsonschema, packaging: a system Python where nothing was installed). The runner's lock for this
Python (stacks/runner/lock-py<X.Y>-linux-x86_64.txt, every package by version and sha256) is installed
once with this Python's pip, in hash-checking mode and wheels only, from the index pip is configured
with, into <cache dir>/runner-site/, and appended to sys.path after everything installed (it only fills
gaps). It is checked against the manifest taken when it was made before every reuse. Without pip, the
lock or the index nothing is installed, and runner.py says what to do."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

from ..core import fsutil, treehash
from ..core.layout import default_cache_dir

NEEDED = ("rich", "jsonschema", "packaging")  # what the harness imports at start (pyproject's dependencies)
BYTECODE = frozenset({"__pycache__"})  # written by the imports themselves: not part of what was installed


class RunnerSiteError(Exception):
    """The runner's dependencies could not be installed; the message says why."""


def missing() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def lock_for(root: Path) -> Path:
    return root / "stacks" / "runner" / f"lock-py{sys.version_info[0]}.{sys.version_info[1]}-linux-x86_64.txt"


def site_dir(lock: Path) -> Path:
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    return default_cache_dir() / "runner-site" / f"py{sys.version_info[0]}.{sys.version_info[1]}-{digest}"


def _install(lock: Path, staging: Path, manifest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--require-hashes", "--only-binary=:all:", "--target", str(staging), "-r", str(lock)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerSiteError(f"pip could not be run ({exc})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise RunnerSiteError(f"pip install of {lock.name} failed: {lines[-1] if lines else proc.returncode}")
    files, stats = treehash.manifest(staging, BYTECODE)
    fsutil.write_json(manifest, {"files": files, "stats": stats})  # stats survive the rename into place


def fill_gaps(root: Path) -> None:
    """Append the runner's locked dependencies to sys.path when this Python lacks one (installing them once)."""
    lacking = missing()
    if not lacking:
        return
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise RunnerSiteError("the runner's lock is made for Linux x86_64 only")
    lock = lock_for(root)
    if not lock.is_file():
        raise RunnerSiteError(f"there is no lock of the runner's dependencies for Python "
                              f"{sys.version_info[0]}.{sys.version_info[1]} ({lock.relative_to(root)})")
    target = site_dir(lock)
    manifest = target.with_name(target.name + ".manifest.json")

    def fill(staging: Path) -> None:
        print(f"runner.py: this Python lacks {', '.join(lacking)}; installing the runner's locked dependencies "
              f"({lock.relative_to(root)}) into {target}, once", file=sys.stderr)
        _install(lock, staging, manifest)

    def intact(folder: Path) -> bool:
        try:
            made = json.loads(manifest.read_text())
            return not treehash.differences(folder, made["files"], made["stats"], BYTECODE)[0]
        except (OSError, ValueError, KeyError, TypeError):
            return False

    sys.path.append(str(fsutil.once(target, fill, intact)))
