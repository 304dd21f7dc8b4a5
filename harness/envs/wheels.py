"""Wheels from the configured package index: download pinned wheels for a target Python, unpack them.

Offline bundles carry them to GPU nodes (bundle.py); compiler packs import one unpacked set per stage
(wheelsite.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..sources.extract import extract_archive

Progress = Callable[[str], None]
# manylinux tags pip should accept for an x86_64 node (glibc 2.17 to 2.39)
DEFAULT_PLATFORMS = ("manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in range(17, 40)), "linux_x86_64")


class WheelError(Exception):
    pass


def download_wheels(specs: list[str], dest: Path, python: str, platforms: tuple[str, ...], progress: Progress) -> None:
    """pip download, no dependencies: every pin is named in the pack or by runner_requirements()."""
    if not specs:
        return
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "--dest", str(dest)]
    for platform in platforms:
        cmd += ["--platform", platform]
    progress(f"downloading wheels for Python {python}: {', '.join(specs)}")
    proc = subprocess.run([*cmd, *specs], capture_output=True, text=True)
    if proc.returncode != 0:
        raise WheelError(f"pip download failed for {specs}: {proc.stderr.strip()[-800:]}")


def unpack_wheels(wheels: Path, tree: Path, prune: tuple[str, ...]) -> list[str]:
    """Unpack every wheel into one tree the way an installer lays it out; drop pruned paths."""
    tree.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with tempfile.TemporaryDirectory(dir=tree.parent) as tmp:
            staging = Path(tmp) / "wheel"
            extract_archive(wheel, staging, strip_top=False)
            for data in staging.glob("*.data"):
                for kind in ("purelib", "platlib"):
                    if (data / kind).is_dir():
                        shutil.copytree(data / kind, staging, dirs_exist_ok=True)
                        shutil.rmtree(data / kind)
            shutil.copytree(staging, tree, dirs_exist_ok=True)
    removed = []
    for pattern in prune:
        for path in sorted(tree.glob(pattern)):
            removed.append(str(path.relative_to(tree)))
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed
