"""Manifests of file trees, to tell whether a tree is still what it was when it was made (stdlib only:
the offline boot verifies with it before anything from a bundle is imported).

A manifest maps each relative path to [size, sha256] (a symbolic link to ["link", target]). Checking a
large tree by hashing every file at every use would cost seconds, so a stat snapshot is kept beside it
(size, mtime, ctime, inode): a file whose stat is unchanged is taken as unchanged, and any other is hashed
again. ctime cannot be set from user space (`touch -d` sets mtime; writing, chmod or a rename sets
ctime), so an edit shows up in the stat even when it keeps the size and the mtime."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

Manifest = dict[str, list]
Stats = dict[str, list[int]]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: Path, skip: frozenset[str]) -> list[tuple[str, os.DirEntry]]:
    out = []
    stack = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                rel = prefix + entry.name
                if entry.name in skip:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", Path(entry.path)))
                else:
                    out.append((rel, entry))
    return sorted(out, key=lambda e: e[0])


def _stat(entry_path: str) -> list[int]:
    st = os.lstat(entry_path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def manifest(root: Path, skip: frozenset[str] = frozenset()) -> tuple[Manifest, Stats]:
    """The manifest of every file and link under root (folders named in `skip` left out), and its stats."""
    files: Manifest = {}
    stats: Stats = {}
    for rel, entry in _walk(root, skip):
        if entry.is_symlink():
            files[rel] = ["link", os.readlink(entry.path)]
        elif entry.is_file(follow_symlinks=False):
            files[rel] = [entry.stat(follow_symlinks=False).st_size, file_sha256(Path(entry.path))]
        else:
            files[rel] = ["special", 0]
        stats[rel] = _stat(entry.path)
    return files, stats


def differences(root: Path, expected: Manifest, stats: Stats | None = None,
                skip: frozenset[str] = frozenset()) -> tuple[list[str], Stats]:
    """(what differs from the manifest: 'changed: p', 'missing: p', 'unexpected: p'; the tree's stats now).
    A file whose stat equals the one in `stats` is not read again."""
    stats = stats or {}
    problems: list[str] = []
    now: Stats = {}
    seen = set()
    for rel, entry in _walk(root, skip) if root.is_dir() else []:
        seen.add(rel)
        want = expected.get(rel)
        if want is None:
            problems.append(f"unexpected: {rel}")
            continue
        st = _stat(entry.path)
        now[rel] = st
        if stats.get(rel) == st:
            continue
        if entry.is_symlink():
            ok = want == ["link", os.readlink(entry.path)]
        elif entry.is_file(follow_symlinks=False):
            ok = want[0] == st[0] and want[1] == file_sha256(Path(entry.path))
        else:
            ok = False
        if not ok:
            problems.append(f"changed: {rel}")
    problems += [f"missing: {rel}" for rel in expected if rel not in seen]
    return problems, now


def snapshot(root: Path, skip: frozenset[str] = frozenset()) -> Stats:
    """Stats of every file under root: a cheap before/after picture of a tree that is not ours to hash."""
    return {rel: _stat(entry.path) for rel, entry in _walk(root, skip)} if root.is_dir() else {}


def snapshot_changes(before: Stats, after: Stats) -> list[str]:
    changed = [f"changed: {p}" for p in before if p in after and after[p] != before[p]]
    return changed + [f"missing: {p}" for p in before if p not in after] + \
        [f"unexpected: {p}" for p in after if p not in before]


def digest(files: Manifest) -> str:
    """One sha256 for a whole manifest (paths, sizes and hashes)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + "\0".join(map(str, files[rel])).encode() + b"\n")
    return h.hexdigest()
