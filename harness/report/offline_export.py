"""--export NN DIR --export-offline: what an exported folder's second route needs on a GPU node without
network, for one Python (--python) and platform.

  <release>.tar.gz       the release sdist a pack (or a companion) pins by sha256, as downloaded; the README
                         checks the sha256, unpacks it and puts it under git for `git apply`
  upstream-<sha>.tar.gz  otherwise the pinned commit's files under [source].paths (git archive); the README
                         checks each path's git id against the commit's, so the folder proves it holds that
                         commit's files before the patch is applied
  wheels/                the locked wheels of each stack the steps install, minus the runtime (torch, triton,
                         the CUDA libraries), sha256-checked against the lock
  requirements-<stack>-py<X.Y>-without-runtime.txt
                         those pins, for `pip install --no-index --require-hashes`

The runtime is the node's own: the route first checks that its Python's torch and triton are the locked
build (the same rule the collection's own environments follow), then installs the rest into site/ in the
folder (pip --target) and imports it through PYTHONPATH ahead of that Python's own packages, so a system
Python and a virtual environment are used alike and neither is changed. A node whose torch is not the
locked build takes the README's first route, on a machine with network, instead."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core import fsutil
from ..core.layout import Layout
from ..core.manifest import Pack
from ..envs import locks, wheels
from ..envs.locks import Lock
from ..sources import gitutil
from ..sources import upstream as sources
from . import issue

Progress = Callable[[str], None]


class OfflineExportError(Exception):
    """The pack cannot be exported for a node without network; the message says why and what to do."""


@dataclass(frozen=True)
class Checkout:
    folder: str  # where the steps unpack it: upstream, or a companion's folder
    archive: str  # its file in the export
    lines: tuple[str, ...]  # the README's lines that check, unpack and put it under git


def stacks_of(pack: Pack) -> tuple[str, ...]:
    """The stacks the README's steps install, in order (a compiler pack: base, then fixed release)."""
    if pack.is_compiler:
        return tuple(dict.fromkeys(s for s in (pack.stack, pack.compiler.fixed_stack or pack.stack) if s))
    return (pack.stack,) if pack.stack else ()


def without_runtime_name(stack: str, python: str) -> str:
    return f"requirements-{stack}-py{python}-without-runtime.txt"


def _under_git(folder: str) -> str:
    return f"git -C {folder} init -q && git -C {folder} add -A -f"  # so that `git -C {folder} apply` sees it


def _release(repo: str, ref: str, requirement: str, sha256: str, folder: str, cache: Path, dest: Path,
             progress: Progress) -> Checkout:
    """The release sdist the pack pins (by sha256), as downloaded; the README checks its sha256 first."""
    try:
        source = sources.acquire_sdist(repo, ref, requirement, sha256, cache, progress)
    except sources.SourceError as exc:
        raise OfflineExportError(str(exc)) from None
    archive = next((source.tree.parent / "archive").glob("*.tar.gz"), None)
    if archive is None:
        raise OfflineExportError(f"{requirement}: the cached release is not a .tar.gz sdist")
    shutil.copy2(archive, dest / archive.name)
    return Checkout(folder, archive.name, (
        f"echo '{sha256}  {archive.name}' | sha256sum -c --quiet   # {requirement}, the release the pack pins",
        f"mkdir {folder} && tar -xzf {archive.name} -C {folder} --strip-components=1 && {_under_git(folder)}"
        f"   # {ref}"))


def _commit(repo: str, commit: str, ref: str, paths: tuple[str, ...], folder: str, cache: Path, dest: Path,
            progress: Progress) -> Checkout:
    """The commit's files (only `paths` when given: what the pack fetches and imports) as a .tar.gz, archived
    from the pristine source cache's checkout (fetched as the runs fetch it); the README checks each path's
    id (`git write-tree --prefix`, or the file's blob) against the commit's."""
    try:
        tree = sources.acquire_git(repo, ref, commit, "pinned", paths, cache, progress).tree
    except sources.SourceError as exc:
        raise OfflineExportError(str(exc)) from None
    checks = []
    for path in paths or ("",):
        kind = gitutil.git(["cat-file", "-t", f"{commit}:{path}"], cwd=tree).strip()
        oid = gitutil.git(["rev-parse", f"{commit}:{path}"], cwd=tree).strip()
        ask = (f"write-tree --prefix={path}/" if path else "write-tree") if kind == "tree" else f"rev-parse :{path}"
        checks.append(f"test \"$(git -C {folder} {ask})\" = {oid}   # {path or 'the tree'} as in {commit[:12]}")
    name = f"{folder}-{commit[:12]}.tar.gz"
    gitutil.git(["archive", "--format=tar.gz", "-o", str(dest / name), commit, "--", *paths], cwd=tree,
                timeout=1800)
    what = ", ".join(paths) if paths else "every file"
    return Checkout(folder, name, (
        f"mkdir {folder} && tar -xzf {name} -C {folder} && {_under_git(folder)}   # {ref}: {what}", *checks))


def carry(pack: Pack, dest: Path, layout: Layout, cache: Path, python: str, platform: str,
          progress: Progress) -> tuple[list[Path], list[Checkout], list[Lock]]:
    """Write the archives, wheels and requirement files into dest; (files written, checkouts, locks)."""
    stacks = stacks_of(pack)
    try:
        stack_locks = [locks.load(layout, s, python, platform) for s in stacks]
    except locks.StackError as exc:
        raise OfflineExportError(str(exc)) from None
    built = [lock.stack for lock in stack_locks if lock.builds]
    if built:
        raise OfflineExportError(f"stack {built[0]} builds a distribution from source (builds.toml), which an "
                                 "exported folder does not carry; use an offline bundle (--bundle) for this pack")
    checkouts: list[Checkout] = []
    if not pack.is_compiler:
        if pack.sdist and pack.sdist_sha256:
            checkouts.append(_release(pack.repo, pack.base_ref, pack.sdist, pack.sdist_sha256, "upstream", cache,
                                      dest, progress))
        else:
            checkouts.append(_commit(pack.repo, pack.base_commit, pack.base_ref, pack.source_paths, "upstream",
                                     cache, dest, progress))
        for c in pack.companions:
            checkouts.append(_release(c.repo, c.ref, c.sdist, c.sha256, issue.companion_folder(c), cache, dest,
                                      progress))
    written = [dest / c.archive for c in checkouts]
    for lock in stack_locks:
        runtime = set(lock.runtime)
        pins = [p for p in lock.pins if p not in runtime]
        req = dest / without_runtime_name(lock.stack, python)
        fsutil.atomic_write(req, "".join(p.line() + "\n" for p in pins))
        written.append(req)
        progress(f"{lock.stack}: downloading {len(pins)} locked wheels for Python {python} "
                 f"(leaving out its runtime: {len(runtime)} pins)")
        written += sorted(wheels.download(pins, dest / "wheels", python, platform, progress).values())
    return written, checkouts, stack_locks


def runtime_check(lock: Lock, python: str) -> str | None:
    """One shell line that stops unless this Python's torch (and triton, when locked) are the lock's build."""
    torch, triton = lock.pin("torch"), lock.pin("triton")
    if torch is None:
        return None
    names, have = "sys, torch", "torch.__version__.split('+')[0], torch.version.cuda"
    want: tuple[str | None, ...] = (torch.version, lock.cuda)
    if triton is not None:
        names, have, want = names + ", triton", have + ", triton.__version__", (*want, triton.version)
    return (f"python{python} -c \"import {names}; want = {want!r}; have = ({have}); sys.exit(0 if have == want else "
            "f'this route reuses the locked runtime {want}, this Python has {have}: take the first route')\"")


def _install(lock: Lock, python: str, target: str) -> str:
    return (f"python{python} -m pip install -q --no-index --find-links wheels --require-hashes --no-deps "
            f"--target {target} -r {without_runtime_name(lock.stack, python)}")


def steps(pack: Pack, seen: dict[str, str | None], checkouts: list[Checkout], stack_locks: list[Lock],
          python: str) -> list[str]:
    """Shell lines for the node without network, run in the export folder (as issue.steps, second route).
    The locked packages go into site/ (pip --target) and are imported through PYTHONPATH ahead of the
    Python's own: that Python, a system one or a virtual environment, is used as it is and left unchanged."""
    checks = list(dict.fromkeys(c for c in (runtime_check(lock, python) for lock in stack_locks) if c))
    lines = [*(ln for c in checkouts for ln in c.lines), *checks]
    py = f"python{python}"
    if pack.is_compiler:
        fix = pack.compiler
        base, fixed = stack_locks[0], stack_locks[-1]
        return [*lines, _install(base, python, "site"),
                f"PYTHONPATH=site {py} repro.py   # -> {seen.get('clean') or 'BUG_REPRODUCED'}",
                f"{_install(fixed, python, 'site-fixed')}   # {fix.fixed_release}, contains {fix.fix_commit[:12]}",
                f"PYTHONPATH=site-fixed {py} repro.py   # -> {seen.get('fixed-release') or 'FIX_VALIDATED'}"]
    lines += [_install(lock, python, "site") for lock in stack_locks]
    path = ":".join(p for p in (issue.pythonpath(pack), "site" if stack_locks else "") if p)
    return [*lines, *issue.run_and_fix(pack, seen, f"PYTHONPATH={path} {py} repro.py")]
