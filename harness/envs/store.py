"""The unit store: each locked distribution installed once, as the tree a wheel unpacks to, keyed by the
sha256 of that wheel (a lock pins it, so a unit is named by what it is). Environments are assembled from
units (envs/provision.py); an offline bundle carries units, already unpacked, in one xz archive.

A unit is `<store>/<sha256>/` with `tree/` (the installed files) and `unit.json` (name, version, wheel file,
and the manifest of every file: size and sha256) and `stat.json` (the tree's stats, to check it cheaply).
It is made in a staging folder and renamed into place when complete, and checked against its manifest
before every use: a unit edited since (even as root, even with its mtime restored) is refused and made again
where its wheel can be had."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core import fsutil, treehash
from ..sources.extract import extract_archive

Progress = Callable[[str], None]


class StoreError(Exception):
    """A unit that is not what its manifest says, or cannot be made; the message names the path."""


@dataclass(frozen=True)
class Unit:
    path: Path  # <store>/<sha256>
    name: str
    version: str
    wheel: str
    sha256: str  # of the wheel
    files: dict  # manifest of tree/

    @property
    def tree(self) -> Path:
        return self.path / "tree"

    @property
    def size(self) -> int:
        return sum(v[0] for v in self.files.values() if isinstance(v[0], int))


def tmp_dir(root: Path) -> Path:
    """root/tmp, made if missing: where staging folders and downloads live until renamed into place (the
    same file system as root, so the rename is atomic)."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return root / "tmp"


def unit_dir(store: Path, sha256: str) -> Path:
    return store / sha256


def read(path: Path) -> Unit:
    meta = json.loads((path / "unit.json").read_text())
    return Unit(path, meta["name"], meta["version"], meta["wheel"], meta["sha256"], meta["files"])


def verify(unit: Unit) -> list[str]:
    """What differs between the unit's tree and its manifest (empty: it is intact); refreshes its stats."""
    stats = fsutil.read_json(unit.path / "stat.json")
    problems, now = treehash.differences(unit.tree, unit.files, stats)
    if not problems and now != stats:
        try:
            fsutil.write_json(unit.path / "stat.json", now)
        except OSError:
            pass  # a read-only store (an image's) is checked by hashing again next time
    return problems


def find(store: Path, sha256: str) -> Unit | None:
    """The intact unit of this wheel, or None (absent, half-made, or changed since it was made: removed)."""
    path = unit_dir(store, sha256)
    if not (path / "unit.json").is_file():
        return None
    try:
        unit = read(path)
    except (OSError, ValueError, KeyError):
        problems = ["unit.json unreadable"]
    else:
        problems = verify(unit)
        if not problems:
            return unit
    try:
        fsutil.remove_tree(path)
    except OSError as exc:
        raise StoreError(f"unit {path} differs from its manifest ({'; '.join(problems[:3])}) and cannot be "
                         f"removed ({exc})") from exc
    return None


def unpack_wheel(wheel: Path, tree: Path, prune: tuple[str, ...] = ()) -> None:
    """Lay a wheel out as an installer would under one site folder: its .data purelib/platlib merged in;
    `prune` globs (relative to the tree) removed (a bundle leaves out what no pack loads)."""
    extract_archive(wheel, tree, strip_top=False)
    for data in tree.glob("*.data"):
        for kind in ("purelib", "platlib"):
            if (data / kind).is_dir():
                shutil.copytree(data / kind, tree, dirs_exist_ok=True, copy_function=shutil.copy2)
                shutil.rmtree(data / kind)
    for pattern in prune:
        for path in sorted(tree.glob(pattern)):
            fsutil.remove_tree(path)


def add_wheel(store: Path, wheel: Path, name: str, version: str, sha256: str, prune: tuple[str, ...] = ()) -> Unit:
    """The unit of a wheel whose sha256 was checked by the caller: made once, renamed into place."""
    found = find(store, sha256)
    if found is not None:
        return found
    staging = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_dir(store)))
    try:
        unpack_wheel(wheel, staging / "tree", prune)
        return _finish(store, staging, {"name": name, "version": version, "wheel": wheel.name, "sha256": sha256,
                                        "pruned": list(prune)})
    except BaseException:
        fsutil.remove_tree(staging)
        raise


def add_tree(store: Path, tree: Path, meta: dict) -> Unit:
    """A unit from an unpacked tree (a bundle's) that must match meta['files'] exactly."""
    problems, _ = treehash.differences(tree, meta["files"])
    if problems:
        raise StoreError(f"unit {meta['name']} {meta['version']} ({tree}) differs from its manifest: "
                         + "; ".join(problems[:5]))
    found = find(store, meta["sha256"])
    if found is not None:
        return found
    staging = Path(tempfile.mkdtemp(prefix=f"{meta['name']}-", dir=tmp_dir(store)))
    try:
        os.rename(tree, staging / "tree")
        return _finish(store, staging, meta)
    except BaseException:
        fsutil.remove_tree(staging)
        raise


def _finish(store: Path, staging: Path, meta: dict) -> Unit:
    files, stats = treehash.manifest(staging / "tree")
    if "files" in meta and meta["files"] != files:
        raise StoreError(f"unit {meta['name']}: the unpacked tree differs from the manifest it came with")
    meta = {**meta, "files": files}
    (staging / "unit.json").write_text(json.dumps(meta, sort_keys=True) + "\n")
    (staging / "stat.json").write_text(json.dumps(stats) + "\n")
    final = unit_dir(store, meta["sha256"])
    try:
        os.rename(staging, final)
    except OSError:
        if find(store, meta["sha256"]) is None:  # not another run that finished first
            raise
        fsutil.remove_tree(staging)
    return read(final)
