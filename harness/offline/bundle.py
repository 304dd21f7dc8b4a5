"""Offline bundles for GPU nodes without network.

`--bundle DIR --pack ... --python X.Y` (where the package index can be reached) writes:
  units.tar.xz        every locked distribution the packs' stacks need for that Python, each once, unpacked
                      (a unit of the store, envs/store.py), minus each pack's bundle_prune paths: one solid
                      xz archive, so stacks that share pins (tilelang, z3) carry them once
  runner-site.tar.xz  the runner's own dependencies (stacks/runner's lock) as units, for nodes that lack them
  sources.tar.xz      the packs' pristine source cache entries (sparse git trees or sdists, without .git; a
                      companion sdist only with its import paths), each with its manifest
  bundle.json         what is in it: the sha256 of every file, and the digest of every unit's and every source
                      entry's manifest
By default the runtime (torch, triton, the CUDA libraries) stays out: a GPU node has its torch, and the
environment reuses it when it is the locked build (envs/provision.py); `--bundle-runtime` carries it too
(gigabytes). `--offline DIR` on the node checks every hash (offline/boot.py, before anything is imported),
unpacks each archive once, and provisions the very same environments from these units that an online run
provisions from the index."""

from __future__ import annotations

import lzma
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..core import fsutil, treehash
from ..core.layout import Layout
from ..core.manifest import Pack
from ..envs import builds, locks, provision, store, wheels
from ..envs.locks import Lock, Pin
from ..sources import companions, extract
from ..sources import upstream as sources
from . import boot

Progress = Callable[[str], None]
UNITS, RUNNER_SITE, SOURCES = "units.tar.xz", "runner-site.tar.xz", "sources.tar.xz"
LOCAL_FILES = frozenset({"stat.json"})  # a tree's stats belong to the machine it lies on: never bundled


class BundleError(Exception):
    pass


def pack_tree(tree: Path, archive: Path) -> None:
    """tree -> archive (.tar.xz, preset 9; the xz tool's threads when it is installed). Owners are dropped,
    modification times kept (tilelang keys its kernel cache on its library's size and mtime)."""
    plain = archive.with_suffix("")  # .tar
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(tree.rglob("*")):
            if path.name in LOCAL_FILES or path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(tree)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_file():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    if shutil.which("xz"):
        subprocess.run(["xz", "-T0", "-9", "-f", str(plain)], check=True)
    else:  # pragma: no cover - xz is on every machine we know
        with open(plain, "rb") as src, lzma.open(archive, "wb", preset=9) as dst:
            shutil.copyfileobj(src, dst)
        plain.unlink()


# ---------------------------------------------------------------- sources


def _copy_entry(entry: Path, cache: Path, dest_cache: Path, keep: frozenset[str] | None = None) -> tuple[str, str]:
    """Copy one cache entry (its tree, its records); with `keep`, only those paths of its tree, and a manifest
    cut to them. Returns (the entry's path in the cache, the digest of the manifest it carries)."""
    rel = entry.relative_to(cache)
    target = dest_cache / rel
    fsutil.remove_tree(target)
    target.mkdir(parents=True)
    skip = shutil.ignore_patterns(".git", "archive")
    files = fsutil.read_json(entry / sources.MANIFEST_FILE).get("files")
    if files is None:
        raise BundleError(f"{entry}: no {sources.MANIFEST_FILE} (made by an older runner); remove it from the cache "
                          "and bundle again")
    for item in entry.iterdir():
        if item.is_file() and item.name not in LOCAL_FILES and item.name != sources.MANIFEST_FILE:
            shutil.copy2(item, target / item.name)
    if keep is None:
        shutil.copytree(entry / "tree", target / "tree", symlinks=True, ignore=skip)
    else:
        for path in sorted(keep):
            shutil.copytree(entry / "tree" / path, target / "tree" / path, symlinks=True, ignore=skip)
        files = {p: v for p, v in files.items() if any(manifest_inside(p, k) for k in keep)}
    fsutil.write_json(target / sources.MANIFEST_FILE, {"files": files, "digest": treehash.digest(files)})
    return str(rel), treehash.digest(files)


def manifest_inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _companion_keep(pack: Pack) -> list[frozenset[str] | None]:
    """What of each companion's tree a bundle carries: its import paths; None (all) when one is the root."""
    return [None if "." in c.import_paths else frozenset(c.import_paths) for c in pack.companions]


def _carry_sources(packs: list[Pack], dest: Path, cache: Path, refs: list[str],
                   progress: Progress) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Write dest/SOURCES: every pack's base, its trees at `refs` and its companions, from the pristine
    cache. Returns (each pack's carried entries, each carried entry's manifest digest)."""
    staging = dest / "sources"
    fsutil.remove_tree(staging)
    entries: dict[str, list[dict]] = {}
    # entry folder -> what of it to carry (None: all). A companion is imported, never patched or diffed,
    # so only its import paths travel (Liger 0.8.2's sdist is 39 MiB, its src/ 3 MiB); an entry that is
    # also some pack's target, or that a pack imports from its root, travels whole.
    carry: dict[Path, frozenset[str] | None] = {}
    for pack in packs:
        got = [sources.acquire_base(pack, cache, "auto", progress)]
        for ref in refs:
            if pack.is_compiler and ref != pack.compiler.fixed_release:
                progress(f"{pack.name}: not carrying {ref}: a compiler pack runs released wheels, and is SKIPPED there")
                continue
            try:
                commit, how = sources.resolve_ref(pack.repo, ref, cache, progress)
                got.append(sources.acquire_git(pack.repo, ref, commit, how, pack.source_paths, cache, progress))
            except sources.SourceError as exc:  # the run at that ref will say why, as it would online
                progress(f"{pack.name}: not carrying {ref}: {exc}")
        entries[pack.name] = []
        carried = [(s, False, None) for s in got]
        carried += list(zip(companions.acquire(pack, cache, progress), [True] * len(pack.companions),
                            _companion_keep(pack), strict=True))
        for src, companion, keep in carried:
            entry = src.tree.parent
            before = carry.get(entry, keep)
            carry[entry] = None if before is None or keep is None else before | keep
            entries[pack.name].append({"kind": src.kind, "ref": src.ref, "commit": src.commit, "sdist": src.sdist,
                                       "entry": str(entry.relative_to(cache)), "companion": companion})
        refs_file = cache / "refs" / f"{pack.repo.replace('/', '+')}.json"
        if refs and refs_file.is_file():
            (staging / "refs").mkdir(parents=True, exist_ok=True)
            shutil.copy2(refs_file, staging / "refs" / refs_file.name)
    digests = {}
    for entry, keep in carry.items():
        rel, digest = _copy_entry(entry, cache, staging, keep)
        digests[rel] = digest
    progress("packing the source cache (xz -9)")
    staging.mkdir(exist_ok=True)
    pack_tree(staging, dest / SOURCES)
    fsutil.remove_tree(staging)
    return entries, digests


# ---------------------------------------------------------------- units


def _carry_units(locks_: list[Lock], dest_dir: Path, env_dir: Path, prune: tuple[str, ...], runtime: bool,
                 progress: Progress) -> tuple[dict[str, dict], dict[str, dict]]:
    """Copy the units of every lock's pins (the runtime too when `runtime`) into dest_dir/<sha>/, pruned.
    Returns (units: sha -> record, stacks: stack -> what was carried and left out)."""
    index = provision.IndexSource(env_dir / "store")
    units: dict[str, dict] = {}
    stacks: dict[str, dict] = {}
    for lock in locks_:
        runtime_names = set() if runtime else {p.name for p in lock.runtime}
        pins = [p for p in lock.pins if p.name not in runtime_names]
        progress(f"{lock.describe()}: carrying {len(pins)} pins" +
                 (f", leaving out its runtime ({len(runtime_names)} pins: torch, triton, CUDA libraries)"
                  if runtime_names else ""))
        for unit in index.units(pins, lock, progress):
            if unit.sha256 not in units:
                units[unit.sha256] = _copy_unit(unit, dest_dir, prune)
            units[unit.sha256].setdefault("stacks", []).append(lock.stack)
        stacks[lock.stack] = {"lock": lock.path.name, "lock_sha256": lock.sha256, "python": lock.python,
                              "platform": lock.platform, "carried": sorted(p.name for p in pins),
                              "left_out": sorted(runtime_names)}
        if lock.builds:
            stacks[lock.stack]["builds"] = _carry_builds(lock, dest_dir, env_dir / "store", progress)
    return units, stacks


def _carry_builds(lock: Lock, dest_dir: Path, store_dir: Path, progress: Progress) -> list[dict]:
    """The sdists of the lock's builds (dest_dir/sdists/), and the wheels built from them before for the
    lock's key where this machine's store has them (dest_dir/built/): the node then need not build."""
    out = []
    for build in lock.builds:
        sdist = builds.download_sdist(store_dir, build, progress)
        (dest_dir / "sdists").mkdir(exist_ok=True)
        shutil.copyfile(sdist, dest_dir / "sdists" / sdist.name)
        key = lock.build_key(build)
        entry = {"name": build.name, "version": build.version, "sdist": f"sdists/{sdist.name}", "key": key}
        found = builds.kept_wheel(store_dir, key)
        if found is not None:
            builds.carry(*found, dest_dir / "built")
            entry["built"] = {"wheel": found[0].name, "wheel_sha256": found[1]["wheel_sha256"]}
        progress(f"{build.requirement}: carrying its sdist" + (" and its earlier build" if "built" in entry else
                                                              " (the node builds it)"))
        out.append(entry)
    return out


def _copy_unit(unit: store.Unit, dest_dir: Path, prune: tuple[str, ...]) -> dict:
    target = dest_dir / unit.sha256
    shutil.copytree(unit.tree, target / "tree", symlinks=True)
    removed = []
    for pattern in prune:
        for path in sorted((target / "tree").glob(pattern)):
            removed.append(str(path.relative_to(target / "tree")))
            fsutil.remove_tree(path)
    files, _ = treehash.manifest(target / "tree")
    meta = {"name": unit.name, "version": unit.version, "wheel": unit.wheel, "sha256": unit.sha256, "files": files,
            "pruned": removed}
    fsutil.write_json(target / "unit.json", meta)
    return {"name": unit.name, "version": unit.version, "wheel": unit.wheel, "digest": treehash.digest(files),
            "pruned": removed}


def create(packs: list[Pack], dest: Path, python: str, platform: str, cache: Path, refs: list[str],
           layout: Layout, env_dir: Path, progress: Progress, runtime: bool = False) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    for stale in (UNITS, RUNNER_SITE, SOURCES, boot.MANIFEST, "packs-site.tar.xz"):
        (dest / stale).unlink(missing_ok=True)
    try:
        stack_locks = [locks.load(layout, s, python, platform) for s in dict.fromkeys(
            s for p in packs for s in locks.pack_stacks(p))]
        # the runner's own dependencies, for nodes whose Python lacks them (a collection without
        # stacks/runner bundles none: the node must have them)
        runner_lock = locks.load(layout, "runner", python, platform) if "runner" in locks.available(layout) else None
    except locks.StackError as exc:
        raise BundleError(str(exc)) from exc
    entries, source_digests = _carry_sources(packs, dest, cache, refs, progress)
    prune = tuple(sorted({g for p in packs for g in p.bundle_prune}))
    work = Path(tempfile.mkdtemp(prefix="bundle-", dir=dest))
    try:
        (work / "units").mkdir()
        (work / "runner").mkdir()
        units, stacks = _carry_units(stack_locks, work / "units", env_dir, prune, runtime, progress)
        runner_units = {}
        if runner_lock is not None:
            runner_units, _ = _carry_units([runner_lock], work / "runner", env_dir, (), True, progress)
        progress("packing the units (xz -9)")
        pack_tree(work / "units", dest / UNITS)
        if runner_units:
            pack_tree(work / "runner", dest / RUNNER_SITE)
    finally:
        fsutil.remove_tree(work)
    files = {str(p.relative_to(dest)): treehash.file_sha256(p) for p in sorted(dest.rglob("*"))
             if p.is_file() and p.name != boot.MANIFEST}
    manifest = {
        "format": boot.FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runner_version": __version__,
        "python": python,
        "platform": platform,
        "packs": entries,
        "stacks": stacks,
        "runtime_carried": runtime,
        "pruned": list(prune),
        "units": units,
        "runner_units": runner_units,
        "sources": source_digests,
        "archives": {"units": UNITS, "runner": RUNNER_SITE if runner_units else None, "sources": SOURCES},
        "files": files,
    }
    fsutil.write_json(dest / boot.MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------- on the node


class BundleSource:
    """Units from an opened bundle: each pin's unit must be one the bundle carries, intact."""

    def __init__(self, folder: Path, manifest: dict, bundle: Path):
        self.folder, self.manifest, self.bundle = folder, manifest, bundle
        self.where = f"bundle {bundle}"

    def units(self, pins: list[Pin], lock: Lock, progress: Progress) -> list[store.Unit]:
        carried = self.manifest["units"]
        out, missing = [], []
        for pin in pins:
            sha = next((h.removeprefix("sha256:") for h in pin.hashes if h.removeprefix("sha256:") in carried
                        and wheels.suits(carried[h.removeprefix("sha256:")]["wheel"], lock.python, lock.platform)),
                       None)
            unit = store.find(self.folder, sha) if sha else None
            if unit is None or treehash.digest(unit.files) != carried[sha]["digest"]:
                missing.append(f"{pin.name}=={pin.version}")
            else:
                out.append(unit)
        if missing:
            left = self.manifest.get("stacks", {}).get(lock.stack, {}).get("left_out", [])
            hint = (" (its runtime was left out: this node's torch is not the locked build, so make the bundle with "
                    "--bundle-runtime)" if any(m.split("==")[0] in left for m in missing) else
                    f" (made for {', '.join(self.manifest.get('stacks', {})) or 'no stack'}, Python "
                    f"{self.manifest.get('python')}); make it again for these packs and this Python")
            raise provision.EnvUnavailable(f"stack {lock.stack}: bundle {self.bundle} does not carry "
                                           f"{', '.join(missing[:5])}{hint}")
        return out

    def download_size(self, pins: list[Pin], lock: Lock) -> int | None:
        return 0

    def sdist(self, build: builds.Build, store_dir: Path, progress: Progress) -> Path:
        found = builds.sdist_from_folder(store_dir, self.folder / "sdists", build)
        if found is None:
            raise builds.BuildError(f"bundle {self.bundle} does not carry the sdist of {build.requirement}; make "
                                    "it again with this collection")
        return found

    def carried_builds(self, store_dir: Path) -> None:
        """Earlier builds the bundle carries, each checked against the record in bundle.json."""
        for stack in self.manifest.get("stacks", {}).values():
            for entry in stack.get("builds", []):
                carried = entry.get("built")
                record = fsutil.read_json(self.folder / "built" / f"{entry['key']}.json")
                if carried and record.get("wheel_sha256") == carried["wheel_sha256"]:
                    builds.import_one(store_dir, self.folder / "built", record)


@dataclass
class Opened:
    cache: Path  # the pristine source cache, unpacked
    units: BundleSource
    manifest: dict[str, Any]
    record: dict[str, Any]


def _sources_intact(folder: Path, expected: dict[str, str]) -> bool:
    for rel, digest in expected.items():
        carried = fsutil.read_json(folder / rel / sources.MANIFEST_FILE)
        if treehash.digest(carried.get("files", {})) != digest or sources.entry_problems(folder / rel):
            return False
    return True


def open_bundle(bundle: Path, progress: Progress) -> Opened:
    """Verify a bundle (every file's sha256) and unpack what it carries, once: (source cache, unit source, ...)."""
    try:
        manifest = boot.verify(bundle)
        progress(f"offline bundle {bundle} (made {manifest['created_at']}): {len(manifest['files'])} files checked")
        units = boot.unpack_units(bundle, manifest, "units", "units")

        def fill(target: Path) -> None:
            extract.extract_archive(bundle / manifest["archives"]["sources"], target, strip_top=False)
            (target / sources.OFFLINE_MARK).write_text("unpacked from a bundle: nothing here can be fetched again\n")

        cache = fsutil.once(boot.unpack_dir(bundle) / "sources", fill,
                            lambda t: _sources_intact(t, manifest.get("sources", {})))
    except (boot.BootError, extract.UnsafeArchiveError, OSError) as exc:
        raise BundleError(str(exc)) from exc
    record = {"path": str(bundle), "created_at": manifest["created_at"], "python": manifest.get("python"),
              "stacks": sorted(manifest.get("stacks", {})), "runtime_carried": manifest.get("runtime_carried"),
              "pruned": manifest.get("pruned", [])}
    return Opened(cache, BundleSource(units, manifest, bundle), manifest, record)
