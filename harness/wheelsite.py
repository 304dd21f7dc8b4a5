"""Unpacked wheel trees for compiler packs: each stage imports its own compiler release.

A compiler pack (pack 13: a TileLang compiler bug) has no patch a reproducer could run: the fix is C++
inside the compiler. Its stages differ by the installed release instead: the base release's wheels
for the clean stage, the first release that contains the fix for the other. Each set of pins is
downloaded once from the configured index (no dependencies resolved: every pin is named in the pack)
and unpacked into the source cache, keyed by the pins and the interpreter's Python version.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from . import wheels
from .sources import Progress, SourceError


def python_version(python: str) -> str:
    """X.Y of the interpreter that will run the reproducers (its wheels must match it)."""
    out = subprocess.run([python, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def site(pins: tuple[str, ...], prune: tuple[str, ...], cache: Path, python: str, progress: Progress) -> Path:
    """The unpacked tree of `pins` for `python`, from the cache or the index; put it first on PYTHONPATH."""
    version = python_version(python)
    key = hashlib.sha256("\n".join([version, *sorted(pins), *sorted(prune)]).encode()).hexdigest()[:16]
    entry = cache / "wheels" / key
    if (entry / "done").is_file():
        progress(f"{', '.join(pins)}: unpacked wheels from cache")
        return entry / "site"
    staging = entry.with_name(key + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        wheels.download_wheels(list(pins), staging / "wheels", version, wheels.DEFAULT_PLATFORMS, progress)
        wheels.unpack_wheels(staging / "wheels", staging / "site", prune)
    except (wheels.WheelError, subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise SourceError(f"wheels {', '.join(pins)} for Python {version}: {exc}") from exc
    shutil.rmtree(staging / "wheels")
    (staging / "done").write_text("\n".join(pins) + "\n")
    shutil.rmtree(entry, ignore_errors=True)
    staging.rename(entry)
    return entry / "site"
