"""Offline bundles for GPU nodes without network (DESIGN.md, "Offline bundles").

`--bundle DIR` (on a machine with the package index) writes:
  packs-site.tar.xz   the packs' pinned extra wheels for the node's Python and platform, unpacked into
                      one tree (minus each pack's bundle_prune paths) and packed as one xz archive
  runner-site.tar.xz  the runner's own dependencies, as installed here (they only fill gaps there)
  sources.tar.xz      the packs' pristine source cache (sparse git trees or sdists, without .git; a
                      companion sdist only with its import paths), unpacked once on the node
  bundle.json         what is in it, with sha256 of every file
`--offline DIR` (on the node) checks the hashes, unpacks the wheel trees once and runs from them alone.
"""

from __future__ import annotations

import json
import lzma
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from .. import __version__
from ..core.manifest import Pack
from ..envs import wheelsite
from ..envs.wheels import DEFAULT_PLATFORMS, download_wheels, unpack_wheels  # noqa: F401 - DEFAULT_PLATFORMS: cli
from ..report.receipts import sha256_file
from ..sources import companions
from ..sources import upstream as sources
from . import boot as offline_boot

Progress = Callable[[str], None]
PACKS_SITE, RUNNER_SITE, SOURCES = "packs-site.tar.xz", "runner-site.tar.xz", "sources.tar.xz"


class BundleError(Exception):
    pass


def runner_requirements() -> list[str]:
    """The harness's runtime dependencies and theirs, pinned to what is installed here."""
    todo, seen, pins = ["upstream-repro"], set(), []
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if key != "upstream-repro":
            pins.append(f"{dist.metadata['Name']}=={dist.version}")
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(pins)


def pack_tree(tree: Path, archive: Path) -> None:
    """tree -> archive (.tar.xz, preset 9; the xz tool's threads when it is installed)."""
    plain = archive.with_suffix("")  # .tar
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(tree.rglob("*")):
            if path.is_file() or path.is_dir():
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


def _copy_entry(entry: Path, cache: Path, dest_cache: Path, keep: frozenset[str] | None = None) -> str:
    """Copy one cache entry; with `keep`, only those paths of its tree (plus the entry's own files)."""
    rel = entry.relative_to(cache)
    target = dest_cache / rel
    if target.exists():
        sources.remove_tree(target)
    skip = shutil.ignore_patterns(".git", "archive")
    if keep is None:
        shutil.copytree(entry, target, symlinks=True, ignore=skip)
        return str(rel)
    target.mkdir(parents=True)
    for item in entry.iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)
    for path in sorted(keep):
        shutil.copytree(entry / "tree" / path, target / "tree" / path, symlinks=True, ignore=skip)
    return str(rel)


def _companion_keep(pack: Pack) -> list[frozenset[str] | None]:
    """What of each companion's tree a bundle carries: its import paths; None (all) when one is the root."""
    return [None if "." in c.import_paths else frozenset(c.import_paths) for c in pack.companions]


def _carry_sources(packs: list[Pack], dest: Path, cache: Path, refs: list[str],
                   progress: Progress) -> tuple[dict[str, list[dict]], dict[str, list[str]]]:
    """Write dest/SOURCES: every pack's base, its trees at `refs` and its companions, from the pristine
    cache. Returns (each pack's carried entries, the companion entries cut to their import paths)."""
    for old in (dest / "cache", dest / "sources"):  # an earlier bundle's plain cache, or a cut-off one's staging
        if old.exists():
            sources.remove_tree(old)
    dest_cache = dest / "sources"  # staging: packed into SOURCES below
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
            entry = src.tree.parent  # a target's keep is None: it travels whole
            before = carry.get(entry, keep)
            carry[entry] = None if before is None or keep is None else before | keep
            entries[pack.name].append({"kind": src.kind, "ref": src.ref, "commit": src.commit, "sdist": src.sdist,
                                       "entry": str(entry.relative_to(cache)), "companion": companion})
        refs_file = cache / "refs" / f"{pack.repo.replace('/', '+')}.json"
        if refs and refs_file.is_file():
            (dest_cache / "refs").mkdir(parents=True, exist_ok=True)
            shutil.copy2(refs_file, dest_cache / "refs" / refs_file.name)

    pruned_companions = {}
    for entry, keep in carry.items():
        rel = _copy_entry(entry, cache, dest_cache, keep)
        if keep is not None:
            pruned_companions[rel] = sorted(keep)
    # Python sources compress well (the Megatron trees of eight packs at base and main: 50 MiB, 2.3 MB
    # as xz), and the GPU node's carry is 64 MiB: the source cache travels as one archive.
    progress("packing the source cache (xz -9)")
    dest_cache.mkdir(exist_ok=True)
    pack_tree(dest_cache, dest / SOURCES)
    sources.remove_tree(dest_cache)
    return entries, pruned_companions


def create(packs: list[Pack], dest: Path, python: str, platforms: tuple[str, ...], cache: Path,
           refs: list[str], progress: Progress) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    entries, pruned_companions = _carry_sources(packs, dest, cache, refs, progress)

    work = Path(tempfile.mkdtemp(prefix="bundle-", dir=dest))
    try:
        pins = sorted({w for p in packs for w in p.wheels})
        prune = tuple(sorted({g for p in packs for g in p.bundle_prune}))
        removed = _unpacked(pins, work, "packs-site", prune, python, platforms, progress)  # [] without pins
        runner_pins = runner_requirements()
        _unpacked(runner_pins, work, "runner-site", (), python, platforms, progress)
        progress("packing the wheel trees (xz -9)")
        if pins:
            pack_tree(work / "packs-site", dest / PACKS_SITE)
        pack_tree(work / "runner-site", dest / RUNNER_SITE)
        compiler_sites = _compiler_sites(packs, dest, work, python, platforms, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    files = {str(p.relative_to(dest)): sha256_file(p) for p in sorted(dest.rglob("*"))
             if p.is_file() and p.name != offline_boot.MANIFEST}
    manifest = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runner_version": __version__,
        "python": python,
        "platforms": list(platforms),
        "packs": entries,
        "wheels": pins,
        "pruned": removed,
        "companion_trees_cut_to": pruned_companions,
        "runner_wheels": runner_pins,
        "packs_site": PACKS_SITE if pins else None,
        "runner_site": RUNNER_SITE,
        "sources": SOURCES,
        "compiler_sites": compiler_sites,
        "files": files,
    }
    (dest / offline_boot.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _unpacked(pins: list[str], work: Path, name: str, prune: tuple[str, ...], python: str, platforms: tuple[str, ...],
              progress: Progress) -> list[str]:
    """Download `pins` and unpack them into work/name (pruned); the pruned paths."""
    download_wheels(pins, work / f"{name}-wheels", python, platforms, progress)
    return unpack_wheels(work / f"{name}-wheels", work / name, prune)


def _compiler_sites(packs: list[Pack], dest: Path, work: Path, python: str, platforms: tuple[str, ...],
                    progress: Progress) -> dict[str, list[str]]:
    """Each compiler pack's base and fixed wheel sets, keyed by wheelsite.key of the whole set, as a list of
    archives: the pins only that set has, then the pins both sets share (packed once: pack 13's z3-solver
    alone is 45 MB unpacked, and both sets must fit one 64 MiB carry)."""
    sites: dict[str, list[str]] = {}
    packed: set[str] = set()
    for pack in packs:
        if not pack.is_compiler:
            continue
        base, fixed = pack.compiler.base_wheels, pack.compiler.fixed_wheels
        shared = tuple(p for p in base if p in fixed)
        for pins in (base, fixed):
            parts = [part for part in (tuple(p for p in pins if p not in shared), shared) if part]
            names = [wheelsite.key(part, pack.bundle_prune, python) for part in parts]
            for part, name in zip(parts, names, strict=True):
                if name not in packed:
                    _unpacked(list(part), work, name, pack.bundle_prune, python, platforms, progress)
                    pack_tree(work / name, dest / f"compiler-{name}.tar.xz")
                    packed.add(name)
            sites[wheelsite.key(pins, pack.bundle_prune, python)] = [f"compiler-{n}.tar.xz" for n in names]
    return sites


def wheel_archives(bundle: Path, manifest: dict) -> dict[str, list[tuple[Path, str]]]:
    """What a compiler pack's stages unpack on the node instead of downloading (see wheelsite.site)."""
    return {name: [(bundle, a) for a in archives] for name, archives in (manifest.get("compiler_sites") or {}).items()}


def open_bundle(bundle: Path, progress: Progress) -> tuple[Path, list[Path], dict]:
    """Verify a bundle and make it usable: (source cache, PYTHONPATH entries for reproducers, manifest)."""
    path = bundle / offline_boot.MANIFEST
    if not path.is_file():
        raise BundleError(f"--offline {bundle}: no {offline_boot.MANIFEST}; make one with --bundle")
    manifest = json.loads(path.read_text())
    progress(f"offline bundle {bundle} (made {manifest['created_at']}): checking {len(manifest['files'])} files")
    bad = [name for name, digest in manifest["files"].items()
           if not (bundle / name).is_file() or sha256_file(bundle / name) != digest]
    if bad:
        raise BundleError(f"--offline {bundle}: files missing or changed since bundling: {bad[:5]}")
    site = [offline_boot.unpack(bundle, manifest["packs_site"])] if manifest.get("packs_site") else []
    # bundles made before the source cache was archived carry it as a plain cache/ folder
    cache = offline_boot.unpack(bundle, manifest["sources"]) if manifest.get("sources") else bundle / "cache"
    return cache, site, manifest


def run_record(bundle: Path, manifest: dict) -> dict:
    """What an --offline run records about the bundle it ran from (results, receipts, bisect records)."""
    return {"path": str(bundle), "created_at": manifest["created_at"], "wheels": manifest["wheels"],
            "pruned": manifest["pruned"]}
