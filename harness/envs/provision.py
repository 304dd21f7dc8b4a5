"""Materializing a stack's locked environment, once, and reusing it.

An environment is a virtual environment (`python -m venv --without-pip`, from the reproducers'
interpreter) whose site-packages holds exactly the lock's distributions, hard-linked from the unit store
(envs/store.py), under `<env dir>/<stack>-py<X.Y>-<key>/`; the key is a digest of the lock, the base
interpreter and the runtime decision below. It is built in a temporary folder and renamed into place when
complete (a cut-off build is never reused), under a file lock (a second run provisioning the same
environment waits, then reuses it), and checked against its manifest before every use.

Where the units come from is the only thing that differs between provisioning online (the package index
pip is configured with, `pip download --require-hashes`), offline (an offline bundle's unit archive),
and in a container build (a wheelhouse folder): one code path assembles the environment from them.

The runtime (torch, triton and the CUDA libraries torch loads) is reused from the interpreter's own
installation, by symbolic links into the environment, only when it is the locked build: the same torch
version (its local tag aside), built for the lock's CUDA version (torch/version.py's `cuda`, against the
lock's nvidia-cuda-runtime X.Y), and the same triton version. The CUDA libraries are then the ones that
torch was installed with; where their versions differ from the lock the record lists them. Otherwise the
locked runtime is installed like every other pin (the progress line says how large it is)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from packaging.version import InvalidVersion, Version

from ..core import fsutil, treehash
from . import builds, probe, store, wheels
from .locks import Lock, Pin

Progress = Callable[[str], None]
ENV_FILE = "env.json"


class EnvError(Exception):
    """The environment could not be made; the message names the stack and what to do."""


class EnvUnavailable(EnvError):
    """It cannot be made on this machine (no lock for its Python or platform, no index and no bundle):
    a property of the machine, reported as SKIPPED."""


@dataclass
class Env:
    python: str  # the interpreter the stages run
    record: dict[str, Any]  # what results and receipts keep
    variables: dict[str, str] = field(default_factory=dict)  # set for the stages (CUDA_HOME from the lock's wheels)
    path: Path | None = None  # the environment's folder (None: the interpreter as it is)
    verify: Callable[[], list[str]] = field(default=lambda: [], repr=False)  # what changed in it since it was made


class UnitSource(Protocol):
    where: str  # "the package index", "bundle DIR", "wheelhouse DIR"

    def units(self, pins: list[Pin], lock: Lock, progress: Progress) -> list[store.Unit]: ...

    def download_size(self, pins: list[Pin], lock: Lock) -> int | None: ...

    def sdist(self, build: builds.Build, store_dir: Path, progress: Progress) -> Path: ...

    def carried_builds(self, store_dir: Path) -> None: ...


class IndexSource:
    """Units from the package index pip is configured with (downloaded once into the store)."""

    def __init__(self, store_dir: Path):
        self.store_dir = store_dir
        self.where = "the package index"

    def units(self, pins: list[Pin], lock: Lock, progress: Progress) -> list[store.Unit]:
        have, need = _from_store(self.store_dir, pins, lock)
        if need:
            fsutil.require_space(self.store_dir, 3 * (self.download_size(need, lock) or 0), f"{len(need)} wheels")
            with tempfile.TemporaryDirectory(prefix="wheels-", dir=store.tmp_dir(self.store_dir)) as tmp:
                got = wheels.download(need, Path(tmp), lock.python, lock.platform, progress)
                for pin in need:
                    wheel = got[pin.name]
                    digest = treehash.file_sha256(wheel)
                    have.append(store.add_wheel(self.store_dir, wheel, pin.name, pin.version, digest))
        return have

    def download_size(self, pins: list[Pin], lock: Lock) -> int | None:
        missing = [p for p in pins if _stored(self.store_dir, p, lock) is None]
        sizes = wheels.index_sizes(missing, lock.python, lock.platform)
        return sum(sizes.values()) if sizes else None

    def sdist(self, build: builds.Build, store_dir: Path, progress: Progress) -> Path:
        return builds.download_sdist(store_dir, build, progress)

    def carried_builds(self, store_dir: Path) -> None:
        return None


class FolderSource(IndexSource):
    """Units from a local folder of wheels (a container build's wheelhouse, made from the same lock)."""

    def __init__(self, store_dir: Path, folder: Path):
        super().__init__(store_dir)
        self.folder = folder
        self.where = f"wheelhouse {folder}"

    def units(self, pins: list[Pin], lock: Lock, progress: Progress) -> list[store.Unit]:
        have, need = _from_store(self.store_dir, pins, lock)
        found = wheels.from_folder(need, self.folder, lock.python, lock.platform)
        for pin, wheel in zip(need, found.values(), strict=True):
            have.append(store.add_wheel(self.store_dir, wheel, pin.name, pin.version, treehash.file_sha256(wheel)))
        return have

    def download_size(self, pins: list[Pin], lock: Lock) -> int | None:
        return 0

    def sdist(self, build: builds.Build, store_dir: Path, progress: Progress) -> Path:
        found = builds.sdist_from_folder(store_dir, self.folder, build)
        if found is None:
            raise builds.BuildError(f"{self.where} has no sdist of {build.requirement} with sha256 "
                                    f"{build.sdist_sha256[:12]}...")
        return found

    def carried_builds(self, store_dir: Path) -> None:
        builds.import_built(store_dir, self.folder)


def _stored(store_dir: Path, pin: Pin, lock: Lock) -> store.Unit | None:
    """The store's unit of this pin for the lock's Python and platform. The lock pins every file of a
    version, so the store may also hold the same version's wheel for another Python: never that one."""
    for h in pin.hashes:
        unit = store.find(store_dir, h.removeprefix("sha256:"))
        if unit is not None and wheels.suits(unit.wheel, lock.python, lock.platform):
            return unit
    return None


def _from_store(store_dir: Path, pins: list[Pin], lock: Lock) -> tuple[list[store.Unit], list[Pin]]:
    have, need = [], []
    for pin in pins:
        unit = _stored(store_dir, pin, lock)
        (have.append(unit) if unit else need.append(pin))
    return have, need


# ---------------------------------------------------------------- the runtime decision


def _release(version: str) -> str:
    return version.split("+", 1)[0]


def runtime_decision(lock: Lock, host: dict) -> tuple[bool, str]:
    """(reuse the interpreter's runtime?, why) for this lock and the host's probe.runtime()."""
    torch_pin = lock.pin("torch")
    if torch_pin is None:
        return False, "the stack has no torch"
    have = host.get("runtime", {})
    torch = have.get("torch")
    if torch is None:
        return False, "this interpreter has no torch"
    try:
        same = Version(_release(torch["version"])) == Version(torch_pin.version)
    except InvalidVersion:
        same = False
    built = host.get("torch_cuda")
    if not same or built != lock.cuda:
        return False, (f"this interpreter's torch {torch['version']} (CUDA {built or 'none'}) is not the locked build "
                       f"{torch_pin.version} for CUDA {lock.cuda}")
    triton_pin = lock.pin("triton")
    triton = have.get("triton")
    if triton_pin and (triton is None or _release(triton["version"]) != triton_pin.version):
        return False, (f"this interpreter's triton {triton['version'] if triton else '(none)'} is not the locked "
                       f"{triton_pin.version}")
    return True, f"this interpreter's torch {torch['version']} (CUDA {built}) is the locked build"


def _runtime_tag(reuse: bool, host: dict) -> str:
    if not reuse:
        return "installed"
    t = host["runtime"]["torch"]
    return f"host:{t['version']}:{host.get('torch_cuda')}:{t['location']}"


# ---------------------------------------------------------------- provisioning


def env_name(lock: Lock, base_python: str, tag: str) -> str:
    parts = [lock.sha256, lock.platform, os.path.realpath(base_python), tag]
    if lock.builds_sha256:
        parts.append(lock.builds_sha256)
    key = hashlib.sha256("\n".join(parts).encode())
    return f"{lock.stack}-py{lock.python}-{key.hexdigest()[:16]}"


def site_packages(env_dir: Path, python: str) -> Path:
    return env_dir / "lib" / f"python{python}" / "site-packages"


def provide(lock: Lock, base_python: str, env_root: Path, source: UnitSource, progress: Progress,
            host: dict | None = None) -> Env:
    """The environment of `lock` for `base_python`: reused when made before and intact, else made now."""
    t0 = time.monotonic()
    host = host if host is not None else probe.runtime(base_python)
    if "error" in host:
        raise EnvError(f"stack {lock.stack}: {host['error']}")
    if host.get("python") != lock.python:
        raise EnvError(f"stack {lock.stack}: the lock is for Python {lock.python}, the interpreter {base_python} is "
                       f"{host.get('python')}")
    reuse, why = runtime_decision(lock, host)
    name = env_name(lock, base_python, _runtime_tag(reuse, host))
    final = env_root / name
    say = lambda m: progress(f"environment {lock.stack} (py{lock.python}, lock {lock.sha256[:12]}): {m}")  # noqa: E731
    with fsutil.locked(env_root / "locks" / f"{name}.lock",
                       lambda: say("another run is making it; waiting")):
        existing = _intact(final)
        if existing is not None:
            record = {**existing, "state": "reused", "seconds": round(time.monotonic() - t0, 2)}
            return _env(final, lock, record)
        if final.exists():
            say(f"{final} differs from what was made; making it again")
            fsutil.remove_tree(final)
        record = _build(lock, base_python, env_root, final, source, host, reuse, why, say)
    record["seconds"] = round(time.monotonic() - t0, 2)
    say(f"ready in {record['seconds']:.0f}s ({record['runtime']['mode']} runtime)")
    return _env(final, lock, record)


def _intact(final: Path) -> dict | None:
    record = fsutil.read_json(final / ENV_FILE)
    if not record.get("files"):
        return None
    stats = fsutil.read_json(final / "stat.json")
    problems, now = treehash.differences(final, record["files"], stats, skip=frozenset({ENV_FILE, "stat.json"}))
    if problems:
        return None
    if now != stats:
        try:
            fsutil.write_json(final / "stat.json", now)  # links added elsewhere change ctimes: hash once, not each time
        except OSError:
            pass
    return {k: v for k, v in record.items() if k != "files"}


def _env(final: Path, lock: Lock, record: dict) -> Env:
    python = str(final / "bin" / "python")
    site = site_packages(final, lock.python)
    variables = {}
    nvcc = site / "nvidia" / "cu13" / "bin" / "nvcc"
    if "CUDA_HOME" not in os.environ and not shutil.which("nvcc") and nvcc.is_file():
        variables["CUDA_HOME"] = str(nvcc.parent.parent)  # the lock's CUDA compiler wheels, laid out like a toolkit
        variables["PATH"] = f"{nvcc.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    full = fsutil.read_json(final / ENV_FILE)

    def verify() -> list[str]:
        problems, _ = treehash.differences(final, full.get("files", {}), fsutil.read_json(final / "stat.json"),
                                           skip=frozenset({ENV_FILE, "stat.json"}))
        return problems

    return Env(python, record, variables, final, verify)


def _build(lock: Lock, base_python: str, env_root: Path, final: Path, source: UnitSource, host: dict, reuse: bool,
           why: str, say: Progress) -> dict:
    runtime_names = {p.name for p in lock.runtime} if reuse else set()
    pins = [p for p in lock.pins if p.name not in runtime_names]
    size = source.download_size(pins, lock)
    runtime_pins = [p for p in lock.pins if p.name not in runtime_names and p in lock.runtime]
    what = f"{len(pins)} of {len(lock.pins)} pins from {source.where}"
    if size:
        what += f" ({size / 1e6:,.0f} MB to download)"
    if reuse:
        what += f"; torch and {len(runtime_names) - 1} runtime pins (triton, CUDA libraries) reused ({why})"
    elif runtime_pins:
        what += f"; the locked torch and its CUDA libraries are installed too ({why})"
    say(f"making it: {what}")
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=store.tmp_dir(env_root)))
    try:
        subprocess.run([base_python, "-m", "venv", "--without-pip", str(staging)], check=True, capture_output=True,
                       text=True, timeout=300)
        site = site_packages(staging, lock.python)
        site.mkdir(parents=True, exist_ok=True)
        units = source.units(pins, lock, say)
        _link_units(units, site)
        linked = _link_runtime(host, site) if reuse else []
        built = _add_builds(lock, staging, site, env_root / "store", source, say)
        files, stats = treehash.manifest(staging, skip=frozenset({ENV_FILE, "stat.json"}))
        record = {
            "stack": lock.stack, "python": lock.python, "platform": lock.platform, "lock": lock.path.name,
            "lock_sha256": lock.sha256, "name": final.name, "path": str(final), "state": "created",
            "provisioned_from": source.where, "base_python": base_python,
            "runtime": _runtime_record(lock, host, reuse, why, linked),
            "pins": len(lock.pins), "installed": [f"{u.name}=={u.version}" for u in units],
            **({"built": built} if built else {}),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        fsutil.write_json(staging / ENV_FILE, {**record, "files": files})
        fsutil.write_json(staging / "stat.json", stats)
        os.rename(staging, final)
        # the venv's own files name the folder it was made in only in pyvenv.cfg's informational `command`
        return record
    except subprocess.CalledProcessError as exc:
        raise EnvError(f"stack {lock.stack}: {base_python} -m venv failed: {exc.stderr.strip()[-300:]}") from exc
    except (wheels.WheelError, store.StoreError, builds.BuildError) as exc:
        raise EnvError(f"stack {lock.stack}: {exc}") from exc
    except OSError as exc:
        if fsutil.is_no_space(exc) or isinstance(exc, fsutil.NoSpace):
            raise EnvError(f"stack {lock.stack}: {exc.strerror if isinstance(exc, fsutil.NoSpace) else exc} "
                           f"(making {final})") from exc
        raise
    finally:
        if staging.exists():
            fsutil.remove_tree(staging)


def _add_builds(lock: Lock, staging: Path, site: Path, store_dir: Path, source: UnitSource,
                say: Progress) -> list[dict]:
    """Build (or reuse the earlier build of) each of the stack's builds.toml entries with the environment's
    interpreter, and link its unit in; what was done, for the record."""
    if not lock.builds:
        return []
    source.carried_builds(store_dir)
    torch = lock.pin("torch")
    out = []
    for build in lock.builds:
        key = lock.build_key(build)
        found = builds.built_unit(store_dir, key)
        if found is not None:
            unit, record, state = *found, "reused"
            say(f"{build.requirement}: reusing its build {record.get('wheel')} (built in "
                f"{record.get('build_seconds')}s on {record.get('built_on', 'another run')})")
        else:
            sdist = source.sdist(build, store_dir, say)
            facts = {"python": lock.python, "platform": lock.platform, "torch": torch.version if torch else None,
                     "cuda": lock.cuda, "built_on": os.uname().nodename,
                     "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            unit, record = builds.build_wheel(build, sdist, str(staging / "bin" / "python"), site, store_dir, key,
                                              facts, say)
            state = "built"
        _link_units([unit], site)
        out.append({"name": build.name, "version": build.version, "state": state, "key": key,
                    "sdist_sha256": build.sdist_sha256, "wheel": record.get("wheel"),
                    "wheel_sha256": record.get("wheel_sha256"), "build_seconds": record.get("build_seconds")})
    return out


def _link_units(units: list[store.Unit], site: Path) -> None:
    """Hard-link every unit's files into site (a copy where the file systems differ); two units that install
    the same path with different contents are an error (the same bytes twice are linked once: TE's
    meta-package ships the core wheel's Python files again)."""
    owner: dict[str, tuple[str, list]] = {}
    for unit in units:  # every source hands out units it has just checked against their manifests
        for rel, entry in unit.files.items():
            if rel in owner:
                if owner[rel][1] == entry and entry[0] != "link":
                    continue
                raise store.StoreError(f"{unit.name} and {owner[rel][0]} both install {rel}, differently")
            owner[rel] = (unit.name, entry)
            src, dest = unit.tree / rel, site / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if entry[0] == "link":
                os.symlink(entry[1], dest)
                continue
            try:
                os.link(src, dest)
            except OSError:
                shutil.copy2(src, dest)


def _link_runtime(host: dict, site: Path) -> list[str]:
    """Symbolic links in site to the interpreter's torch, triton and CUDA-library distributions."""
    linked = []
    for _name, dist in sorted(host["runtime"].items()):
        for top in dist["top_level"]:
            dest = site / top
            if os.path.lexists(dest):
                continue
            target = Path(dist["location"]) / top
            if target.exists():
                os.symlink(target, dest)
                linked.append(top)
    return linked


def _runtime_record(lock: Lock, host: dict, reuse: bool, why: str, linked: list[str]) -> dict:
    if not reuse:
        return {"mode": "installed" if lock.runtime else "none", "why": why}
    have = host["runtime"]
    differs = {p.name: [have[p.name]["version"], p.version] for p in lock.runtime
               if p.name in have and _release(have[p.name]["version"]) != p.version}
    missing = [p.name for p in lock.runtime if p.name not in have]
    return {"mode": "reused", "why": why, "torch": have["torch"]["version"], "cuda": host.get("torch_cuda"),
            "from": have["torch"]["location"], "linked": linked,
            "differs_from_lock": differs, "not_installed_here": missing}


def host_env(python: str) -> Env:
    """The interpreter as it is (--env host): nothing provisioned."""
    return Env(python, {"mode": "host", "python": python})
