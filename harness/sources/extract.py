"""Safe extraction of release archives: no member may land outside the target directory."""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


class UnsafeArchiveError(Exception):
    pass


def _checked_name(name: str, archive: Path) -> str:
    norm = posixpath.normpath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or norm.startswith("../") or norm == ".." or ":" in norm.split("/")[0]:
        raise UnsafeArchiveError(f"{archive.name}: member '{name}' would be written outside the target")
    return norm


def extract_archive(archive: Path, dest: Path, strip_top: bool = True) -> None:
    """Extract a .tar.gz / .tar.xz / .zip / .whl into dest (which must not exist yet). Stdlib only:
    offline_boot uses it before the harness's dependencies are importable.

    Refused: absolute paths, '..', links of any kind, device files. Only regular files and
    directories are written, with the archive's executable bit and modification time and no ownership.
    The time matters: tilelang keys its kernel cache on its library's size and mtime, so a bundle
    unpacked on two machines (or twice) must give the same stamp for a carried kernel cache to hit.
    With strip_top, the single top-level folder of an sdist (name-version/) is removed.
    """
    dest.mkdir(parents=True)
    if archive.name.endswith((".tar.gz", ".tgz", ".tar", ".tar.xz")):
        with tarfile.open(archive) as tar:
            _write([_tar_entry(tar, m, archive) for m in tar.getmembers()], dest, strip_top, archive)
    elif archive.name.endswith((".zip", ".whl")):
        with zipfile.ZipFile(archive) as zf:
            _write([_zip_entry(zf, i, archive) for i in zf.infolist()], dest, strip_top, archive)
    else:
        raise UnsafeArchiveError(f"{archive.name}: unknown archive type")


# (name, is a folder, unix mode, modification time, open the member's bytes)
Entry = tuple[str, bool, int, float, Callable[[], IO[bytes]]]


def _tar_entry(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> Entry:
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"{archive.name}: member '{member.name}' is a link; refused")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive.name}: member '{member.name}' is not a file or folder")
    return member.name, member.isdir(), member.mode, member.mtime, lambda: tar.extractfile(member)


def _zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> Entry:
    mode = info.external_attr >> 16
    if mode and (mode & 0o170000) == 0o120000:
        raise UnsafeArchiveError(f"{archive.name}: member '{info.filename}' is a link; refused")
    return info.filename, info.is_dir(), mode, time.mktime((*info.date_time, 0, 0, -1)), lambda: zf.open(info)


def _write(entries: list[Entry], dest: Path, strip_top: bool, archive: Path) -> None:
    _check_single_top([name for name, *_ in entries], strip_top, archive)
    for name, is_dir, mode, mtime, open_member in entries:
        rel = _strip(_checked_name(name, archive), strip_top, archive)
        if rel is None or rel == ".":
            continue
        target = _target(dest, rel, archive)
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
        target.chmod(0o755 if mode & 0o111 else 0o644)
        os.utime(target, (mtime, mtime))


def _strip(norm: str, strip_top: bool, archive: Path) -> str | None:
    if not strip_top:
        return norm
    head, _, rest = norm.partition("/")
    if not rest:
        return None  # the top-level folder itself
    return rest


def _target(dest: Path, rel: str, archive: Path) -> Path:
    target = (dest / rel).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UnsafeArchiveError(f"{archive.name}: member '{rel}' would be written outside the target")
    return target


def _check_single_top(names: list[str], strip_top: bool, archive: Path) -> None:
    if not strip_top:
        return
    tops = {_checked_name(n, archive).split("/")[0] for n in names}
    if len(tops) != 1:
        raise UnsafeArchiveError(f"{archive.name}: expected one top-level folder, found {sorted(tops)[:5]}")
