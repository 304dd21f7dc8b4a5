"""Safe extraction of release archives: no member may land outside the target directory."""

from __future__ import annotations

import posixpath
import shutil
import tarfile
import zipfile
from pathlib import Path


class UnsafeArchiveError(Exception):
    pass


def _checked_name(name: str, archive: Path) -> str:
    norm = posixpath.normpath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or norm.startswith("../") or norm == ".." or ":" in norm.split("/")[0]:
        raise UnsafeArchiveError(f"{archive.name}: member '{name}' would be written outside the target")
    return norm


def extract_archive(archive: Path, dest: Path, strip_top: bool = True) -> None:
    """Extract a .tar.gz / .zip into dest (which must not exist yet).

    Refused: absolute paths, '..', links of any kind, device files. Only regular files and
    directories are written, with the archive's executable bit and no ownership.
    With strip_top, the single top-level folder of an sdist (name-version/) is removed.
    """
    dest.mkdir(parents=True)
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        _extract_tar(archive, dest, strip_top)
    elif archive.name.endswith((".zip", ".whl")):
        _extract_zip(archive, dest, strip_top)
    else:
        raise UnsafeArchiveError(f"{archive.name}: unknown archive type")


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


def _extract_tar(archive: Path, dest: Path, strip_top: bool) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        _check_single_top([m.name for m in members], strip_top, archive)
        for member in members:
            norm = _checked_name(member.name, archive)
            if member.issym() or member.islnk():
                raise UnsafeArchiveError(f"{archive.name}: member '{member.name}' is a link; refused")
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive.name}: member '{member.name}' is not a file or folder")
            rel = _strip(norm, strip_top, archive)
            if rel is None or rel == ".":
                continue
            target = _target(dest, rel, archive)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            target.chmod(0o755 if member.mode & 0o111 else 0o644)


def _extract_zip(archive: Path, dest: Path, strip_top: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_single_top([i.filename for i in infos], strip_top, archive)
        for info in infos:
            norm = _checked_name(info.filename, archive)
            mode = info.external_attr >> 16
            if mode and (mode & 0o170000) == 0o120000:
                raise UnsafeArchiveError(f"{archive.name}: member '{info.filename}' is a link; refused")
            rel = _strip(norm, strip_top, archive)
            if rel is None or rel == ".":
                continue
            target = _target(dest, rel, archive)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            target.chmod(0o755 if mode & 0o111 else 0o644)


def _check_single_top(names: list[str], strip_top: bool, archive: Path) -> None:
    if not strip_top:
        return
    tops = {_checked_name(n, archive).split("/")[0] for n in names}
    if len(tops) != 1:
        raise UnsafeArchiveError(f"{archive.name}: expected one top-level folder, found {sorted(tops)[:5]}")
