"""Distributions that the package index has only as source, built once in an environment and kept.

A stack may list them in `stacks/<stack>/builds.toml` (name, version, the sdist's sha256, variables for the
build). While an environment is made, after the lock's units are in place, each is built with the
environment's own interpreter (`python -m pip wheel --no-deps --no-build-isolation --no-index`), so it
compiles against the environment's torch and CUDA, and its wheel becomes a unit of the store like a
locked wheel. `<store>/built/<key>.json` records which unit a build gave; the key is a digest of the
sdist's sha256, the build's variables, the lock's Python, platform, torch version and CUDA version (the
runtime is reused only when it is that build: envs/provision.py), so a later environment with the same key
reuses the unit instead of building again.

A built wheel can be carried to another machine (`--export-built DIR`, `--import-built DIR`): the record
travels with it and the wheel's sha256 is checked against it on the way in."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from ..core import fsutil, treehash
from ..core.manifest import tomllib
from ..sources import pkgindex
from . import store

BUILDS_FILE = "builds.toml"
BUILD_TIMEOUT_S = 3600
Progress = Callable[[str], None]


class BuildError(Exception):
    """A build that could not be had or made; the message names it and what to do."""


@dataclass(frozen=True)
class Build:
    name: str  # canonical
    version: str
    sdist_sha256: str
    environment: tuple[tuple[str, str], ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    def key(self, python: str, platform: str, torch: str | None, cuda: str | None) -> str:
        text = "\n".join([self.sdist_sha256, python, platform, torch or "-", cuda or "-",
                          *(f"{k}={v}" for k, v in self.environment)])
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(stack_folder: Path) -> tuple[tuple[Build, ...], str | None]:
    """(builds, sha256 of builds.toml) of a stack; ((), None) when it has none."""
    path = stack_folder / BUILDS_FILE
    if not path.is_file():
        return (), None
    data = path.read_bytes()
    try:
        entries = tomllib.loads(data.decode("utf-8")).get("build", [])
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path}: not valid TOML ({exc})") from exc
    out = []
    for number, entry in enumerate(entries, start=1):
        try:
            name, version, sha = entry["name"], entry["version"], entry["sdist_sha256"]
            env = tuple(sorted((str(k), str(v)) for k, v in entry.get("environment", {}).items()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise BuildError(f"{path}: [[build]] {number} needs name, version and sdist_sha256") from exc
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BuildError(f"{path}: [[build]] {number}: sdist_sha256 is not 64 lower-case hex digits")
        out.append(Build(canonicalize_name(name), str(version), sha, env))
    return tuple(out), hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- sdists


def sdist_dir(store_dir: Path, sha256: str) -> Path:
    return store_dir / "sdists" / sha256


def stored_sdist(store_dir: Path, build: Build) -> Path | None:
    """The build's sdist kept in the store, when its bytes still have the pinned sha256."""
    folder = sdist_dir(store_dir, build.sdist_sha256)
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.is_file() and treehash.file_sha256(path) == build.sdist_sha256:
            return path
    return None


def keep_sdist(store_dir: Path, path: Path, build: Build) -> Path:
    """Copy a verified sdist into the store (staged, renamed into place)."""
    if treehash.file_sha256(path) != build.sdist_sha256:
        raise BuildError(f"{path.name}: its sha256 is not the {build.sdist_sha256[:12]}... that the stack pins "
                         f"for {build.requirement}")
    found = stored_sdist(store_dir, build)
    if found is not None:
        return found
    folder = sdist_dir(store_dir, build.sdist_sha256)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{path.name}.part"
    shutil.copyfile(path, partial)
    os.replace(partial, folder / path.name)
    return folder / path.name


def download_sdist(store_dir: Path, build: Build, progress: Progress) -> Path:
    """The sdist from the package index pip is configured with, checked against the pinned sha256."""
    found = stored_sdist(store_dir, build)
    if found is not None:
        return found
    try:
        release = pkgindex.find_sdist(build.requirement)
        progress(f"downloading the sdist of {build.requirement} ({release.filename})")
        with tempfile.TemporaryDirectory(prefix="sdist-", dir=store.tmp_dir(store_dir)) as tmp:
            return keep_sdist(store_dir, pkgindex.download(release, Path(tmp), build.sdist_sha256), build)
    except pkgindex.PackageIndexError as exc:
        raise BuildError(f"the sdist of {build.requirement} could not be had from the package index: {exc}") from exc


def find_in_folder(folder: Path, build: Build) -> Path | None:
    """A file in folder (a wheelhouse, a bundle) whose sha256 is the build's sdist's."""
    for path in sorted(folder.glob("*.tar.gz")) + sorted(folder.glob("*.zip")) if folder.is_dir() else []:
        if treehash.file_sha256(path) == build.sdist_sha256:
            return path
    return None


def sdist_from_folder(store_dir: Path, folder: Path, build: Build) -> Path | None:
    """The build's sdist, from the store or else from folder (kept in the store); None when neither has it."""
    found = stored_sdist(store_dir, build) or find_in_folder(folder, build)
    return keep_sdist(store_dir, found, build) if found is not None else None


# ---------------------------------------------------------------- built units


def record_path(store_dir: Path, key: str) -> Path:
    return store_dir / "built" / f"{key}.json"


def built_unit(store_dir: Path, key: str) -> tuple[store.Unit, dict] | None:
    """The unit a build with this key gave before, intact, and its record."""
    record = fsutil.read_json(record_path(store_dir, key))
    unit = store.find(store_dir, record["wheel_sha256"]) if record.get("wheel_sha256") else None
    return (unit, record) if unit is not None else None


def kept_wheel(store_dir: Path, key: str) -> tuple[Path, dict] | None:
    """The wheel file a build with this key gave (what is carried to other machines), when its bytes still
    have the sha256 its record says, and that record."""
    record = fsutil.read_json(record_path(store_dir, key))
    wheel = store_dir / "built" / record.get("wheel", "-")
    if wheel.is_file() and treehash.file_sha256(wheel) == record.get("wheel_sha256"):
        return wheel, record
    return None


def keep(store_dir: Path, wheel: Path, record: dict) -> store.Unit:
    """A built wheel (its sha256 already in the record and checked) into the store: its unit, a copy of the
    wheel to carry elsewhere, and the record under its key."""
    unit = store.add_wheel(store_dir, wheel, record["name"], record["version"], record["wheel_sha256"])
    (store_dir / "built").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wheel, store_dir / "built" / wheel.name)
    fsutil.write_json(record_path(store_dir, record["key"]), record)
    return unit


def build_wheel(build: Build, sdist: Path, python: str, site: Path, store_dir: Path, key: str, facts: dict,
                progress: Progress) -> tuple[store.Unit, dict]:
    """Build the sdist with `python` (an environment's, with pip, setuptools and torch in it; `site` its
    site-packages) and keep its wheel as a unit, with the record of how it was made."""
    jobs = str(os.cpu_count() or 1)
    variables = {k: v.replace("{site}", str(site)) for k, v in build.environment}
    env = {**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", jobs), **variables,
           "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "1"}
    env.pop("PYTHONPATH", None)
    progress(f"building {build.requirement} from its sdist with {python} ({env['MAX_JOBS']} jobs); this can take "
             "minutes")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="build-", dir=store.tmp_dir(store_dir)) as tmp:
        log = Path(tmp) / "build.log"
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir",
               str(Path(tmp) / "out"), str(sdist)]
        with open(log, "wb") as out:
            try:
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                                      timeout=BUILD_TIMEOUT_S, start_new_session=True)
            except subprocess.TimeoutExpired as exc:
                raise BuildError(f"building {build.requirement} took more than {BUILD_TIMEOUT_S}s") from exc
        seconds = round(time.monotonic() - t0, 1)
        wheels = sorted((Path(tmp) / "out").glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            kept = store_dir / "built" / f"{key}.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, kept)
            tail = " | ".join(log.read_text("utf-8", "replace").strip().splitlines()[-6:])[-600:]
            raise BuildError(f"building {build.requirement} from its sdist failed after {seconds}s (log: {kept}): "
                             f"{tail}")
        wheel = wheels[0]
        record = {"name": build.name, "version": build.version, "key": key, "sdist_sha256": build.sdist_sha256,
                  "wheel": wheel.name, "wheel_sha256": treehash.file_sha256(wheel),
                  "wheel_size": wheel.stat().st_size, "environment": dict(build.environment),
                  "build_seconds": seconds, "jobs": int(env["MAX_JOBS"]), **facts}
        unit = keep(store_dir, wheel, record)
    progress(f"built {wheel.name} in {seconds:.0f}s ({record['wheel_size'] / 1e6:.1f} MB)")
    return unit, record


# ---------------------------------------------------------------- carrying built wheels between machines


def export_built(store_dir: Path, dest: Path) -> list[str]:
    """Copy every built wheel and its record into dest; the names copied."""
    out = []
    for path in sorted((store_dir / "built").glob("*.json")):
        found = kept_wheel(store_dir, path.stem)
        if found is not None:
            carry(found[0], found[1], dest)
            out += [path.name, found[0].name]
    return out


def carry(wheel: Path, record: dict, dest: Path) -> None:
    """A built wheel and its record (`<key>.json`) into a folder that import_built reads."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wheel, dest / wheel.name)
    fsutil.write_json(dest / f"{record['key']}.json", record)


def import_built(store_dir: Path, folder: Path) -> list[str]:
    """Add the built wheels in folder (with the records export_built wrote) to the store; the keys added. A
    wheel whose sha256 is not its record's is refused."""
    added = []
    for path in sorted(folder.glob("*.json")):
        record = fsutil.read_json(path)
        if {"key", "wheel", "wheel_sha256", "name", "version"} <= set(record):
            import_one(store_dir, folder, record)
            added.append(record["key"])
    return added


def import_one(store_dir: Path, folder: Path, record: dict) -> None:
    wheel = folder / record["wheel"]
    if not wheel.is_file() or treehash.file_sha256(wheel) != record["wheel_sha256"]:
        raise BuildError(f"{wheel}: missing, or its sha256 is not the one its record ({record['key']}.json) has")
    if built_unit(store_dir, record["key"]) is None:
        keep(store_dir, wheel, record)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.envs.builds",
                                description="Carry wheels built from source between machines' unit stores.")
    p.add_argument("--store", type=Path, required=True, help="the unit store (<env dir>/store)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--export-built", type=Path, metavar="DIR", help="copy the built wheels and records here")
    group.add_argument("--import-built", type=Path, metavar="DIR", help="add the built wheels found here")
    args = p.parse_args(argv)
    try:
        if args.export_built:
            names = export_built(args.store, args.export_built)
            print(json.dumps({"exported": names}))
        else:
            print(json.dumps({"imported": import_built(args.store, args.import_built)}))
    except (BuildError, store.StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
