"""Stdlib-only start-up for `runner.py --offline DIR` on a node without network, before the harness
imports jsonschema, rich or packaging: check every file of the bundle against bundle.json, then unpack
the runner's own dependencies and append them to sys.path *after* everything installed (they only fill
gaps). Nothing from the bundle is unpacked or imported before its hash was checked, only archives that
bundle.json lists are read, and an unpack folder left by an earlier run is used only when its contents
match the digests bundle.json records (a folder seeded by someone else is unpacked again).

This module and what it imports (core.treehash, core.fsutil, sources.extract) use the standard library only."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from ..core import fsutil, treehash
from ..sources.extract import extract_archive

MANIFEST = "bundle.json"
FORMAT = 2  # bundles of units (this runner); older bundles are refused with the command that remakes them


class BootError(Exception):
    """A bundle that cannot be used: missing, changed, or made by an older runner."""


VERIFIED: dict[str, str] = {}  # bundle folder -> sha256 of its bundle.json, checked in this process


def read_manifest(bundle: Path) -> dict:
    path = bundle / MANIFEST
    if not path.is_file():
        raise BootError(f"--offline {bundle}: no {MANIFEST}; make a bundle with --bundle where the network is")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BootError(f"--offline {bundle}: {MANIFEST} cannot be read ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format", 1) if isinstance(data, dict) else "?"
        raise BootError(f"--offline {bundle}: made by an older runner (bundle format {found}, this runner reads "
                        f"{FORMAT}); make it again with python runner.py --bundle")
    for key in ("files", "archives", "units", "created_at"):
        if key not in data:
            raise BootError(f"--offline {bundle}: {MANIFEST} has no '{key}'; make the bundle again")
    return data


def verify(bundle: Path) -> dict:
    """bundle.json, once every file it lists is present with its sha256 and every archive it names is one
    of those files (nothing outside the folder, nothing unlisted)."""
    data = read_manifest(bundle)
    files = data["files"]
    if not isinstance(files, dict):
        raise BootError(f"--offline {bundle}: {MANIFEST} 'files' is not a table of names and hashes")
    root = bundle.resolve()
    for name in [*files, *[a for a in data["archives"].values() if a]]:
        resolved = (root / name).resolve() if isinstance(name, str) else root
        if resolved == root or not resolved.is_relative_to(root):
            raise BootError(f"--offline {bundle}: {MANIFEST} names '{name}', which is outside the bundle")
    for archive in (a for a in data["archives"].values() if a):
        if archive not in files:
            raise BootError(f"--offline {bundle}: archive '{archive}' is not among the hashed files of {MANIFEST}")
    digest = treehash.file_sha256(bundle / MANIFEST)
    if VERIFIED.get(str(root)) == digest:
        return data
    bad = [name for name, want in files.items()
           if not (bundle / name).is_file() or treehash.file_sha256(bundle / name) != want]
    if bad:
        raise BootError(f"--offline {bundle}: files missing or changed since bundling: {', '.join(bad[:5])}; "
                        "copy the bundle again")
    VERIFIED[str(root)] = digest
    return data


def unpack_dir(bundle: Path) -> Path:
    """Where this bundle's archives are unpacked (the bundle folder may be read-only)."""
    digest = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()[:16]
    return Path(os.environ.get("REPRO_OFFLINE_UNPACK", tempfile.gettempdir())) / f"upstream-repro-bundle-{digest}"


def units_intact(folder: Path, expected: dict) -> bool:
    """Every unit bundle.json lists is in folder, its manifest is the one bundle.json records, and its files
    match that manifest."""
    for sha, meta in expected.items():
        try:
            unit = json.loads((folder / sha / "unit.json").read_text())
        except (OSError, ValueError):
            return False
        if treehash.digest(unit.get("files", {})) != meta["digest"]:
            return False
        problems, _ = treehash.differences(folder / sha / "tree", unit["files"],
                                           fsutil.read_json(folder / sha / "stat.json"))
        if problems:
            return False
    return True


def unpack_units(bundle: Path, data: dict, archive_key: str, units_key: str) -> Path:
    """The bundle's archive of units (checked, unpacked once, verified at every reuse)."""
    archive = data["archives"][archive_key]
    target = unpack_dir(bundle) / archive_key
    return fsutil.once(target, lambda t: extract_archive(bundle / archive, t, strip_top=False),
                lambda t: units_intact(t, data[units_key]))


def boot(argv: list[str]) -> None:
    """Called by runner.py before the harness imports its dependencies."""
    if "--offline" not in argv:
        return
    i = argv.index("--offline")
    if i + 1 >= len(argv):
        return  # argparse will report the missing folder
    bundle = Path(argv[i + 1]).resolve()
    try:
        data = verify(bundle)
    except BootError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if data["archives"].get("runner") and data.get("runner_units"):
        folder = unpack_units(bundle, data, "runner", "runner_units")
        for sha in sorted(data["runner_units"]):
            sys.path.append(str(folder / sha / "tree"))
