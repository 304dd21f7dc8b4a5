"""Upstream sources: a pristine cache keyed by repo@commit or sdist@sha256, never modified,
and a fresh work copy per stage.

git: fetched from https://github.com/OWNER/NAME (partial, shallow where the server allows it).
Air-gapped sites point git elsewhere with its own `url.<base>.insteadOf`; nothing here knows
about mirrors. sdist: the release archive from the index pip is configured with, sha256-verified
against the pack's pin and extracted safely, then put under git so patches see upstream's paths.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ..core import fsutil, treehash
from ..core.manifest import Pack
from . import gitutil, pkgindex
from .extract import UnsafeArchiveError, extract_archive
from .gitutil import GitError

Progress = Callable[[str], None]
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# A ref as git names branches and tags (git check-ref-format, stricter): no globs, options, ranges or spaces.
REF_RE = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)(?!.*//)[A-Za-z0-9._+/-]{1,200}(?<![./])(?<!\.lock)$")
MANIFEST_FILE = "manifest.json"  # an entry's tree, file by file (size, sha256), written when it was made
OFFLINE_MARK = ".offline-bundle"  # at the root of a cache unpacked from a bundle: what is there cannot be refetched
# git's words for "the remote cannot be reached at all" (no point asking it for more history)
UNREACHABLE = ("Could not resolve host", "unable to access", "Connection refused", "Connection timed out",
               "does not appear to be a git repository", "Network is unreachable")


class SourceError(Exception):
    """Sources could not be had; the message says what was tried and what to do."""


class SourceUnreachable(SourceError):
    """The remote or the index could not be reached at all: a property of this machine, not of the pack."""


class NotApplicable(SourceError):
    """The requested upstream ref does not apply to this pack (a release ref for a git-only pack)."""


@dataclass(frozen=True)
class Source:
    kind: str  # git | sdist | local
    repo: str
    ref: str
    commit: str | None  # upstream commit the tree is at (None for an sdist: a release is not a commit)
    tree: Path  # pristine tree, read-only
    resolution: str  # how ref became commit: pinned, ls-remote, cache, sdist, local
    sdist: str | None = None
    sdist_sha256: str | None = None
    note: str = ""
    from_cache: bool = False

    def record(self) -> dict:
        data = asdict(self)
        data["tree"] = str(self.tree)
        return data


def stamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _slug(repo: str) -> str:
    return repo.replace("/", "+")


def is_unreachable(exc: Exception) -> bool:
    """A git failure that means the remote cannot be reached from here (no network, no mirror)."""
    return isinstance(exc, GitError) and any(sign in exc.stderr for sign in UNREACHABLE)


def from_git_error(exc: Exception, what: str) -> SourceError:
    """`what` failed with exc: SourceUnreachable when the remote cannot be reached, else SourceError."""
    return (SourceUnreachable if is_unreachable(exc) else SourceError)(f"{what}: {exc}")


# ---------------------------------------------------------------- ref resolution


def check_ref(ref: str) -> str:
    """The ref, if it can only mean one branch, tag or commit; else a SourceError saying why (a glob would
    match whatever ls-remote lists first, a leading '-' would be read as an option)."""
    if not REF_RE.match(ref):
        shown = ref if len(ref) <= 60 else ref[:57] + "..."
        raise SourceError(f"'{shown}' is not a git ref this runner accepts: 1-200 characters of letters, digits and "
                          "'._+/-', not starting with '-', without '..', '//', '@{', globs or spaces")
    return ref


def resolve_ref(repo: str, ref: str, cache: Path, progress: Progress) -> tuple[str, str]:
    """ref -> (commit, how). A full sha is taken as is. Otherwise `git ls-remote`; when the remote
    cannot be reached, an earlier resolution from the cache is used and says so."""
    check_ref(ref)
    if SHA_RE.match(ref):
        return ref, "pinned"
    url = f"https://github.com/{repo}"
    record_file = cache / "refs" / f"{_slug(repo)}.json"
    try:
        progress(f"resolving {repo}@{ref} (git ls-remote)")
        out = gitutil.git(["ls-remote", url, ref, f"{ref}^{{}}"], timeout=120)
    except (GitError, OSError) as exc:
        known = _read_json(record_file).get(ref)
        if known:
            return known["commit"], f"cache (resolved {known['resolved_at']}; remote unreachable: {exc})"
        raise SourceUnreachable(
            f"cannot resolve {repo}@{ref}: {exc}. Check the network, or point git at a mirror with "
            f"`git config --global url.<mirror>.insteadOf {url}`."
        ) from exc
    commit = _pick_ref(out, ref)
    if commit is None:
        raise SourceError(f"{repo} has no ref '{ref}' (git ls-remote {url} {ref} found nothing)")
    with fsutil.locked(record_file.with_name(record_file.name + ".lock")):  # other runs record theirs too
        records = _read_json(record_file)
        records[ref] = {"commit": commit, "resolved_at": stamp()}
        fsutil.write_json(record_file, records)
    return commit, "ls-remote"


def _pick_ref(ls_remote: str, ref: str) -> str | None:
    """The commit ls-remote lists for exactly this name (a peeled tag first); nothing else is guessed."""
    rows = [line.split("\t") for line in ls_remote.splitlines() if "\t" in line]
    by_name = {name: sha for sha, name in rows}
    for name in (f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref, f"refs/{ref}"):
        if name in by_name and SHA_RE.match(by_name[name]):
            return by_name[name]
    return None


# ---------------------------------------------------------------- cache entries



def finish_entry(staging: Path, final: Path, meta: dict) -> None:
    """Record the tree's manifest, make it read-only, write its record, and move it into place atomically."""
    _make_read_only(staging / "tree")
    files, stats = treehash.manifest(staging / "tree", skip=frozenset({".git"}))
    fsutil.write_json(staging / MANIFEST_FILE, {"files": files, "digest": treehash.digest(files)})
    fsutil.write_json(staging / "stat.json", stats)
    fsutil.write_json(staging / "source.json", meta)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, final)
    except OSError:
        if (final / "source.json").is_file():  # another run got there first
            remove_tree(staging)
        else:
            raise


def staging_dir(cache: Path) -> Path:
    """A new folder for an entry being made (under the cache's tmp/; removed when the making fails)."""
    (cache / "tmp").mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="fetch-", dir=cache / "tmp"))


def entry_problems(entry: Path) -> list[str]:
    """What differs between a cache entry's tree and the manifest recorded when it was made."""
    recorded = fsutil.read_json(entry / MANIFEST_FILE).get("files")
    if recorded is None:
        return [f"{entry / MANIFEST_FILE} is missing (an entry made by an older runner, or cut off)"]
    stats = fsutil.read_json(entry / "stat.json")
    problems, now = treehash.differences(entry / "tree", recorded, stats, skip=frozenset({".git"}))
    if not problems and now != stats:
        try:
            fsutil.write_json(entry / "stat.json", now)
        except OSError:
            pass
    return problems


def verify(source: Source) -> list[str]:
    """What changed in a cached source's pristine tree since it was made (a --source checkout: nothing checked)."""
    if source.kind == "local":
        return []
    return entry_problems(source.tree.parent)


def cached(final: Path, what: str, progress: Progress) -> bool:
    """Is there an intact entry at final? One that changed since it was made is removed, so it is fetched
    again; in a cache unpacked from a bundle (nothing can be fetched) it is refused, naming the path."""
    if not (final / "source.json").is_file():
        return False
    problems = entry_problems(final)
    if not problems:
        return True
    cache_root = next((p for p in final.parents if (p / OFFLINE_MARK).exists()), None)
    if cache_root is not None:
        raise SourceError(f"{what}: the bundle's pristine tree {final / 'tree'} changed since it was bundled "
                          f"({'; '.join(problems[:3])}); unpack the bundle again (remove {cache_root})")
    progress(f"{what}: the cached tree {final} changed since it was made ({'; '.join(problems[:2])}); fetching it "
             "again")
    remove_tree(final)
    return False


def paths_key(paths: tuple[str, ...]) -> str:
    """What a sparse tree's cache key adds for its paths ("" for the whole tree)."""
    return "-sparse-" + hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:10] if paths else ""


def git_entry(cache: Path, repo: str, commit: str, paths: tuple[str, ...]) -> Path:
    """The cache entry of a git tree; a sparse checkout is keyed by its paths too."""
    return cache / "git" / _slug(repo) / (commit + paths_key(paths))


def sdist_entry(cache: Path, sha256: str) -> Path:
    return cache / "sdist" / sha256


def acquire_git(repo: str, ref: str, commit: str, resolution: str, paths: tuple[str, ...],
                cache: Path, progress: Progress) -> Source:
    final = git_entry(cache, repo, commit, paths)
    if cached(final, f"{repo}@{commit[:12]}", progress):
        progress(f"{repo}@{commit[:12]}: pristine tree from cache")
        return Source("git", repo, ref, commit, final / "tree", resolution, from_cache=True)
    url = f"https://github.com/{repo}"
    staging = staging_dir(cache)
    tree = staging / "tree"
    tree.mkdir()
    try:
        progress(f"cloning {url} at {commit[:12]}" + (f" (paths: {', '.join(paths)})" if paths else ""))
        try:
            _checkout(tree, url, commit, paths, partial=True)
        except GitError as exc:
            if is_unreachable(exc):
                raise
            # A server that refuses single commits or lazy blob requests: take its whole history.
            progress(f"{url} refused a shallow partial fetch ({exc.stderr[:120]}); fetching its whole history")
            remove_tree(tree)
            tree.mkdir()
            _checkout(tree, url, commit, paths, partial=False)
        head = gitutil.git(["rev-parse", "HEAD"], cwd=tree).strip()
        if head != commit:
            raise SourceError(f"{repo}: checked out {head}, expected {commit}")
        for p in paths:
            if not (tree / p).exists():
                raise SourceError(f"{repo}@{commit[:12]}: source path '{p}' does not exist at that commit")
    except (GitError, OSError) as exc:
        remove_tree(staging)
        raise from_git_error(exc, f"git clone of {url} at {commit[:12]} failed") from exc
    except BaseException:
        remove_tree(staging)
        raise
    meta = {"kind": "git", "repo": repo, "ref": ref, "commit": commit, "paths": list(paths),
            "url": url, "fetched_at": stamp()}
    finish_entry(staging, final, meta)
    return Source("git", repo, ref, commit, final / "tree", resolution)


def _checkout(tree: Path, url: str, commit: str, paths: tuple[str, ...], partial: bool) -> None:
    gitutil.git(["init", "-q"], cwd=tree)
    gitutil.git(["remote", "add", "origin", url], cwd=tree)
    if partial:
        gitutil.git(["fetch", "-q", "--depth", "1", "--filter=blob:none", "origin", commit], cwd=tree)
    else:
        gitutil.git(["fetch", "-q", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*"], cwd=tree,
                    timeout=1800)
    if paths:
        gitutil.git(["sparse-checkout", "set", "--no-cone", *("/" + p for p in paths)], cwd=tree)
    gitutil.git(["checkout", "-q", "--detach", commit], cwd=tree, timeout=1800)


def acquire_sdist(repo: str, ref: str, requirement: str, sha256: str, cache: Path,
                  progress: Progress) -> Source:
    final = sdist_entry(cache, sha256)
    if cached(final, requirement, progress):
        progress(f"{requirement}: pristine sdist tree from cache")
        return Source("sdist", repo, ref, None, final / "tree", "sdist", requirement, sha256, from_cache=True)
    progress(f"looking up {requirement} on the configured package index")
    try:
        release = pkgindex.find_sdist(requirement)
    except pkgindex.IndexUnreachable as exc:
        raise SourceUnreachable(f"release sdist {requirement}: {exc}") from exc
    except pkgindex.PackageIndexError as exc:
        raise SourceError(f"release sdist {requirement}: {exc}") from exc
    staging = staging_dir(cache)
    try:
        progress(f"downloading {release.filename}")
        archive = pkgindex.download(release, staging / "archive", sha256)
        extract_archive(archive, staging / "tree")
        gitutil.commit_tree(staging / "tree", f"{requirement} (release sdist, sha256 {sha256})")
    except pkgindex.PackageIndexError as exc:
        remove_tree(staging)
        raise SourceError(f"release sdist {requirement}: {exc}") from exc
    except UnsafeArchiveError as exc:
        remove_tree(staging)
        raise SourceError(f"release sdist {requirement} is refused: {exc}") from exc
    except BaseException:
        remove_tree(staging)
        raise
    meta = {"kind": "sdist", "repo": repo, "ref": ref, "sdist": requirement, "sha256": sha256,
            "filename": release.filename, "url": release.url, "fetched_at": stamp()}
    finish_entry(staging, final, meta)
    return Source("sdist", repo, ref, None, final / "tree", "sdist", requirement, sha256)


def acquire_local(repo: str, directory: Path) -> Source:
    directory = directory.resolve()
    if not directory.is_dir():
        raise SourceError(f"--source {directory}: not a folder")
    commit = None
    if (directory / ".git").exists():
        try:
            commit = gitutil.git(["rev-parse", "HEAD"], cwd=directory).strip()
        except GitError:
            commit = None
    return Source("local", repo, "local", commit, directory, "local", note=f"local checkout {directory}")


def acquire_latest_release(pack: Pack, cache: Path, progress: Progress) -> Source:
    """The newest release on the configured index, for a pack pinned to a release. Nothing pins it,
    so the index's own sha256 is what the download is checked against (and recorded)."""
    if not pack.sdist:
        raise NotApplicable(f"pack {pack.name} is pinned to a git commit, not a release: latest-release does not apply")
    name = pack.sdist.partition("==")[0]
    progress(f"looking up the newest release of {name}")
    try:
        version, release = pkgindex.latest_sdist(name)
    except pkgindex.IndexUnreachable as exc:
        raise SourceUnreachable(f"latest release of {name}: {exc}") from exc
    except pkgindex.PackageIndexError as exc:
        raise SourceError(f"latest release of {name}: {exc}") from exc
    if not release.sha256:
        raise SourceError(f"{release.filename}: the index lists no sha256, so the download cannot be checked")
    source = acquire_sdist(pack.repo, f"latest-release {version}", f"{name}=={version}", release.sha256, cache,
                           progress)
    return replace(source, resolution=f"newest release on the index: {version}")


def acquire_base(pack: Pack, cache: Path, kind: str, progress: Progress) -> Source:
    """A pack's pinned base. kind auto: a tree already in the cache first (git before sdist), else
    git, falling back to the release sdist when git fails; git / sdist: only that."""
    git_cached = (git_entry(cache, pack.repo, pack.base_commit, pack.source_paths) / "source.json").is_file()
    sdist_cached = bool(pack.sdist_sha256) and (sdist_entry(cache, pack.sdist_sha256) / "source.json").is_file()
    if kind == "sdist" or (kind == "auto" and sdist_cached and not git_cached):
        if not pack.sdist:
            raise SourceError(f"pack {pack.name} declares no release sdist for {pack.base_ref}")
        return acquire_sdist(pack.repo, pack.base_ref, pack.sdist, pack.sdist_sha256, cache, progress)
    try:
        return acquire_git(pack.repo, pack.base_ref, pack.base_commit, "pinned", pack.source_paths, cache,
                           progress)
    except SourceError as exc:
        if kind == "git" or not pack.sdist:
            raise
        progress(f"git unavailable ({str(exc)[:160]}); using the release sdist {pack.sdist}")
        source = acquire_sdist(pack.repo, pack.base_ref, pack.sdist, pack.sdist_sha256, cache, progress)
        return replace(source, note=f"git unavailable: {exc}")


# ---------------------------------------------------------------- work copies


def work_copy(source: Source, dest: Path) -> Path:
    """A fresh, writable copy of the pristine tree under its own one-commit git repo.

    The pristine .git is left behind: a work copy only needs `git apply` and `git diff`,
    and a fresh repo cannot reach back into the cache.
    """
    shutil.copytree(source.tree, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    for path in [dest, *dest.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    gitutil.commit_tree(dest, f"{source.repo} {source.ref} ({source.kind})")
    return dest


# ---------------------------------------------------------------- helpers


def _make_read_only(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


remove_tree = fsutil.remove_tree


def _read_json(path: Path) -> dict:
    return fsutil.read_json(path)
