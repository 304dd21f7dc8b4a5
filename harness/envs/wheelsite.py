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
from pathlib import Path

from ..offline import boot as offline_boot
from ..sources.extract import extract_archive
from ..sources.upstream import Progress, SourceError
from . import wheels


def key(pins: tuple[str, ...], prune: tuple[str, ...], version: str) -> str:
    """The name of one unpacked wheel set for Python `version` (the cache entry, the bundle archive)."""
    return hashlib.sha256("\n".join([version, *sorted(pins), *sorted(prune)]).encode()).hexdigest()[:16]


def site(pins: tuple[str, ...], prune: tuple[str, ...], cache: Path, version: str, progress: Progress,
         archives: dict[str, list[tuple[Path, str]]] | None = None) -> list[Path]:
    """The unpacked trees of `pins` for Python `version` (X.Y: the reproducers' interpreter, as the
    environment probe saw it), to put first on PYTHONPATH: from an offline bundle
    (`archives`: key -> its parts as (bundle, archive name); pins shared by a pack's two sets travel
    once), else one tree from the cache or the index."""
    name = key(pins, prune, version)
    if archives and name in archives:
        progress(f"{', '.join(pins)}: unpacking the bundle's wheel set")
        return [_one_tree(name, archives[name])]
    entry = cache / "wheels" / name
    if (entry / "done").is_file():
        progress(f"{', '.join(pins)}: unpacked wheels from cache")
        return [entry / "site"]
    staging = entry.with_name(name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        wheels.download_wheels(list(pins), staging / "wheels", version, wheels.DEFAULT_PLATFORMS, progress)
        wheels.unpack_wheels(staging / "wheels", staging / "site", prune)
    except (wheels.WheelError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise SourceError(f"wheels {', '.join(pins)} for Python {version}: {exc}") from exc
    shutil.rmtree(staging / "wheels")
    (staging / "done").write_text("\n".join(pins) + "\n")
    shutil.rmtree(entry, ignore_errors=True)
    staging.rename(entry)
    return [entry / "site"]


def _one_tree(name: str, parts: list[tuple[Path, str]]) -> Path:
    """The bundle's archives of one wheel set unpacked into one tree, as pip would install them: their
    shared libraries find each other through relative RUNPATHs (tilelang 0.1.8's libtvm needs
    `$ORIGIN/../../z3/lib`), so the pins a bundle packs apart to share between sets must end up siblings
    again. Each archive is extracted once, straight into that tree; later calls reuse it."""
    def fill(target: Path) -> None:
        staging = target.with_name(target.name + ".part")
        shutil.rmtree(staging, ignore_errors=True)  # what a cut-off unpack left
        target.mkdir(parents=True)
        for bundle, archive in parts:
            extract_archive(bundle / archive, staging, strip_top=False)
            _merge(staging, target)
            shutil.rmtree(staging)

    return offline_boot.once(offline_boot.unpack_dir(parts[0][0]) / f"wheelset-{name}", fill)


def _merge(part: Path, target: Path) -> None:
    """Move the tree `part` into `target`; folders both hold are merged, a file both hold is an error
    (two wheels of one set never ship the same file)."""
    for entry in part.iterdir():
        dest = target / entry.name
        if entry.is_dir() and dest.is_dir():
            _merge(entry, dest)
        elif dest.exists():
            raise SourceError(f"wheel set: {dest.relative_to(target)} comes from two of its archives")
        else:
            entry.rename(dest)
