"""File-system helpers every part uses (stdlib only): atomic writes under unique temporary names, a
cross-process lock, removing read-only trees, and folders no two runs can share."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None  # type: ignore[assignment]


class NoSpace(OSError):
    """The disk is full (or nearly): the message names the folder and the size needed."""


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write path through a uniquely named temporary file in the same folder, then rename: a reader sees
    the old file or the new one, never half of one, and two writers never share a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@contextmanager
def locked(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive lock on path (a lock file) across processes; `waiting` is called once when another
    process holds it. Without fcntl (not POSIX) the lock is a no-op."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if waiting:
                    waiting()
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def remove_tree(path: Path) -> None:
    """rmtree that also removes read-only files (pristine caches make their files read-only)."""

    def retry(func, p, _exc):
        try:
            os.chmod(p, stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
            func(p)
        except FileNotFoundError:
            pass

    if not os.path.lexists(path):
        return
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:  # pragma: no cover - older Pythons
        shutil.rmtree(path, onerror=retry)


def unique_dir(parent: Path, stem: str) -> Path:
    """A new folder parent/stem, or parent/stem-2, -3, ... when that exists (made with mkdir, so two runs
    started in the same second never share one)."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free folder name {stem}-N under {parent}")


def run_stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def require_space(folder: Path, needed: int, what: str) -> None:
    """Raise NoSpace when folder's file system has less than needed bytes free (plus 5 % and 200 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    want = int(needed * 1.05) + 200 * 2**20
    if free < want:
        raise NoSpace(errno.ENOSPC, f"not enough disk space for {what} under {folder}: about {want / 2**30:.1f} GiB "
                                    f"needed, {free / 2**30:.1f} GiB free; free some space or point "
                                    "REPRO_CACHE_DIR / REPRO_ENV_DIR elsewhere")


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def once(target: Path, fill: Callable[[Path], object], intact: Callable[[Path], bool]) -> Path:
    """target, made by fill(staging) unless a finished earlier one (a `.done` beside it) passes intact(target);
    anything else there is removed first. Processes that start at once on the same target take turns (a
    file lock beside it): the first fills a staging folder that is renamed into place, the others reuse it."""
    done = target.with_name(target.name + ".done")
    with locked(target.with_name(target.name + ".lock")):
        if done.is_file() and target.is_dir() and intact(target):
            return target
        done.unlink(missing_ok=True)
        remove_tree(target)
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        remove_tree(staging)
        try:
            fill(staging)
            os.rename(staging, target)
        finally:
            remove_tree(staging)
        done.write_text("ok\n")
    return target
