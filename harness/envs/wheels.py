"""Locked wheels from the package index pip is configured with: `pip download --require-hashes --no-deps`
for a target Python and platform (pip checks every file against the lock's hashes; nothing is resolved),
and the sizes the index lists for them (for progress lines and disk checks)."""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from packaging import tags as wheel_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from ..core.procs import run_captured
from ..core.treehash import file_sha256
from ..sources import pkgindex
from .locks import WHEEL_TAGS, Pin

Progress = Callable[[str], None]


class WheelError(Exception):
    """Locked wheels could not be had or did not match the lock; the message names the file."""


def index_sizes(pins: list[Pin], python: str, platform: str) -> dict[str, int]:
    """name -> bytes of the file pip would choose (the largest listed file among the lock's hashes that
    suits the platform); pins the index does not list are left out. Never raises: sizes are for messages."""
    out: dict[str, int] = {}
    for pin in pins:
        try:
            files = pkgindex.project_files(pin.name)
        except pkgindex.PackageIndexError:
            continue
        sizes = [f.size for f in files if f.size and f.sha256 and pin.allows(f.sha256)
                 and suits(f.filename, python, platform)]
        if sizes:
            out[pin.name] = max(sizes)
    return out


_MANYLINUX = re.compile(r"^manylinux_2_(\d+)_(\w+)$")
_LEGACY = {12: "manylinux2010", 5: "manylinux1", 17: "manylinux2014"}


def _expanded(platforms: tuple[str, ...]) -> list[str]:
    """A manylinux_2_N platform also takes every older glibc's wheels (2_N-1 ... 2_5, and the legacy
    manylinux2014/2010/1 names), as pip does for `pip download --platform`."""
    out = list(platforms)
    for tag in platforms:
        m = _MANYLINUX.match(tag)
        if m:
            for minor in range(int(m.group(1)), 4, -1):
                out.append(f"manylinux_2_{minor}_{m.group(2)}")
                if minor in _LEGACY:
                    out.append(f"{_LEGACY[minor]}_{m.group(2)}")
    return list(dict.fromkeys(out))


def suits(filename: str, python: str, platform: str) -> bool:
    """Whether a wheel installs on CPython `python` (X.Y) on `platform` (a lock's platform name): one of its
    tags is among the tags that interpreter accepts. A folder or cache may hold the same version's wheels
    for other Pythons (same pin, other hashes of the lock): they must never be picked."""
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    version = tuple(int(x) for x in python.split(".")[:2])
    platforms = _expanded(WHEEL_TAGS.get(platform, ()))
    accepted = {*wheel_tags.cpython_tags(version, platforms=platforms),
                *wheel_tags.compatible_tags(version, f"cp{version[0]}{version[1]}", platforms)}
    return any(t in accepted for t in tags)


def download(pins: list[Pin], dest: Path, python: str, platform: str, progress: Progress) -> dict[str, Path]:
    """Download the locked wheels of `pins` into dest; {canonical name: wheel}. pip runs in hash-checking
    mode, and each file's sha256 is checked against its pin here again. Pins of one name at two versions
    (two stacks' locks) go to pip in separate calls; the result then holds the last."""
    batches: list[list[Pin]] = []
    for pin in pins:
        batch = next((b for b in batches if all(p.name != pin.name for p in b)), None)
        if batch is None:
            batches.append(batch := [])
        batch.append(pin)
    got: dict[str, Path] = {}
    for batch in batches:
        got.update(_download(batch, dest, python, platform))
    return got


def _download(pins: list[Pin], dest: Path, python: str, platform: str) -> dict[str, Path]:
    if not pins:
        return {}
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="repro-pins-") as tmp:
        req = Path(tmp) / "pins.txt"
        req.write_text("".join(p.line() + "\n" for p in pins))
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
               "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--dest", str(dest),
               "--progress-bar", "off"]
        for tag in WHEEL_TAGS[platform]:
            cmd += ["--platform", tag]
        proc = run_captured([*cmd, "-r", str(req)], timeout=7200)
    if proc.returncode != 0:
        text = proc.stderr.strip()
        if "DO NOT MATCH THE HASHES" in text:
            bad = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("Expected", "Got")) or ".whl" in ln]
            raise WheelError("a downloaded file does not match the lock's sha256 (nothing was installed): "
                             + " | ".join(bad[:6]))
        raise WheelError(f"pip download failed: {text[-800:]}")
    got: dict[str, Path] = {}
    by_name = {p.name: p for p in pins}
    for wheel in dest.glob("*.whl"):
        if not suits(wheel.name, python, platform):
            continue  # the same version for another Python, from an earlier download into this folder
        try:
            name, version, *_ = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            continue
        pin = by_name.get(canonicalize_name(name))
        if pin is None or version != Version(pin.version):
            continue
        digest = file_sha256(wheel)
        if not pin.allows(digest):
            raise WheelError(f"{wheel.name}: sha256 {digest} is not one the lock pins for {pin.name}=={pin.version} "
                             "(nothing was installed)")
        got[pin.name] = wheel
    missing = sorted(set(by_name) - set(got))
    if missing:
        raise WheelError(f"pip downloaded no wheel for {', '.join(missing)}")
    return got


def from_folder(pins: list[Pin], folder: Path, python: str, platform: str) -> dict[str, Path]:
    """The locked wheels of `pins` for CPython `python` on `platform` from a local folder of wheels (a
    container build's wheelhouse), each checked against its pin's sha256; a missing or mismatching file is
    an error naming it."""
    got: dict[str, Path] = {}
    candidates: dict[str, list[Path]] = {}
    for wheel in sorted(folder.glob("*.whl")):
        if not suits(wheel.name, python, platform):
            continue
        try:
            candidates.setdefault(canonicalize_name(parse_wheel_filename(wheel.name)[0]), []).append(wheel)
        except InvalidWheelFilename:
            continue
    for pin in pins:
        match = [w for w in candidates.get(pin.name, []) if pin.allows(file_sha256(w))]
        if not match:
            raise WheelError(f"{folder}: no wheel of {pin.name}=={pin.version} for Python {python} with a sha256 "
                             "the lock pins")
        got[pin.name] = match[0]
    return got
