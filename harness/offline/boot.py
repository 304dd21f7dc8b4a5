"""Stdlib-only start-up for `runner.py --offline DIR` on a node without network: unpack the bundle's
runner dependencies and append them to sys.path *after* everything installed (they only fill gaps),
before the harness imports jsonschema, rich or packaging."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..sources.extract import extract_archive

MANIFEST = "bundle.json"


def unpack_dir(bundle: Path) -> Path:
    """Where this bundle's wheel trees are unpacked: the bundle folder may be read-only."""
    digest = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()[:16]
    return Path(os.environ.get("REPRO_OFFLINE_UNPACK", tempfile.gettempdir())) / f"upstream-repro-bundle-{digest}"


def once(target: Path, fill: Callable[[Path], None]) -> Path:
    """target, made by fill(target) unless an earlier call finished it (a `.done` file beside it says
    so); what a cut-off call left is removed first."""
    done = target.with_name(target.name + ".done")
    if done.is_file():
        return target
    if target.exists():
        shutil.rmtree(target)  # an unpack that was cut off
    fill(target)
    done.write_text("ok\n")
    return target


def unpack(bundle: Path, archive: str) -> Path:
    """Unpack bundle/archive (a .tar.xz of one wheel tree) once, with extract.py's checks; later calls
    reuse it."""
    return once(unpack_dir(bundle) / archive.removesuffix(".tar.xz"),
                lambda target: extract_archive(bundle / archive, target, strip_top=False))


def boot(argv: list[str]) -> None:
    """Called by runner.py before the harness is imported."""
    if "--offline" not in argv:
        return
    i = argv.index("--offline")
    if i + 1 >= len(argv):
        return  # argparse will report the missing folder
    bundle = Path(argv[i + 1]).resolve()
    if not (bundle / MANIFEST).is_file():
        return  # the CLI will say that this is not a bundle
    manifest = json.loads((bundle / MANIFEST).read_text())
    if manifest.get("runner_site"):
        sys.path.append(str(unpack(bundle, manifest["runner_site"])))
