"""The image of a set of stacks: its base, its build context and the tag that names exactly those inputs.

One Dockerfile (docker/Dockerfile) serves every set of stacks. The base image comes from docker/base.toml
(a public image; REPRO_DOCKER_BASE / REPRO_DOCKER_PYTHON name another, such as one made from a Debian
archive with debootstrap on a site without a registry). The build needs no network: the runner prepares
the context on the host, with the collection's own code and locks and a wheelhouse of every locked wheel
for the base's Python (the runtime included: torch and the CUDA libraries, the CUDA compiler as wheels),
and the build provisions each stack's environment from that wheelhouse with the runner itself
(`runner.py --provision --wheelhouse`), exactly as a host provisions from the index. So a built image
holds the same environments a plain run would make, and the runner inside finds them as made.

The tag is a digest of the Dockerfile, the base (image, digest, Python), the runner's code and every lock
the image holds: a changed input gives a new tag and a build, an unchanged one reuses the image."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core import fsutil
from ..core.layout import Layout
from ..core.manifest import Pack
from ..envs import locks, wheels

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

IMAGE_REPO = "upstream-repro"
ENV_DIR = "/opt/repro/envs"  # the environments inside the image
RUNNER_PYTHON = "/opt/repro/runner/bin/python"  # the runner's own venv inside the image


class ImageError(Exception):
    """The image's inputs cannot be read or had; the message names the file and what to do."""


@dataclass(frozen=True)
class Base:
    image: str
    digest: str  # "" when it could not be read
    python: str  # X.Y of the base's python3: which locks the image installs
    source: str  # where this came from

    @property
    def ref(self) -> str:
        return self.image + (f"@{self.digest}" if self.digest else "")


def docker_dir(layout: Layout) -> Path:
    return layout.root / "docker"


def base(layout: Layout) -> Base:
    """docker/base.toml, or the base named by REPRO_DOCKER_BASE (and its Python, REPRO_DOCKER_PYTHON)."""
    if os.environ.get("REPRO_DOCKER_BASE"):
        python = os.environ.get("REPRO_DOCKER_PYTHON", "")
        if python not in locks.PYTHONS:
            raise ImageError(f"REPRO_DOCKER_BASE is set: REPRO_DOCKER_PYTHON must say the base's Python, one of "
                             f"{', '.join(locks.PYTHONS)} (got '{python}')")
        return Base(os.environ["REPRO_DOCKER_BASE"], "", python, "REPRO_DOCKER_BASE")
    path = docker_dir(layout) / "base.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ImageError(f"{path}: cannot be read ({exc})") from exc
    image, digest, python = data.get("image", ""), data.get("digest", ""), str(data.get("python", ""))
    bad_digest = digest and not (digest.startswith("sha256:") and len(digest) == 71)
    if not image or bad_digest or python not in locks.PYTHONS:
        raise ImageError(f"{path}: needs image = 'name:tag', digest = '' or 'sha256:<64 hex>', and python = one of "
                         f"{', '.join(locks.PYTHONS)}")
    return Base(image, digest, python, str(path))


def stacks_of(packs: list[Pack]) -> list[str]:
    missing = [p.id for p in packs if not p.stack]
    if missing:
        raise ImageError(f"pack {', '.join(missing)}: no [requires].stack in pack.toml, so the image cannot hold its "
                         "environment (stage: choosing the image); name one of stacks/")
    return sorted({s for p in packs for s in locks.pack_stacks(p)})


def _locks(layout: Layout, stacks: list[str], python: str) -> list[locks.Lock]:
    try:
        out = [locks.load(layout, s, python, "linux-x86_64") for s in [*stacks, "runner"]]
    except locks.StackError as exc:
        raise ImageError(str(exc)) from exc
    built = [f"{lock.stack} ({', '.join(b.requirement for b in lock.builds)})" for lock in out if lock.builds]
    if built:
        # the image is provisioned from a wheelhouse of locked wheels: its context carries no builds.toml or sdist
        raise ImageError(f"stack {', '.join(built)} builds from source, which an image build does not do (stage: "
                         "choosing the image); run these packs without --docker, where the environment builds it")
    return out


def _harness_files(layout: Layout) -> list[Path]:
    root = layout.root / "harness"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".json"))


def tag_for(layout: Layout, stacks: list[str], b: Base) -> tuple[str, str]:
    """(image tag, full content digest) of the image holding these stacks."""
    h = hashlib.sha256()
    h.update((docker_dir(layout) / "Dockerfile").read_bytes())
    h.update(f"\0{b.image}\0{b.digest}\0{b.python}\0".encode())
    for lock in _locks(layout, stacks, b.python):
        h.update(f"{lock.stack}\0{lock.sha256}\0".encode())
    for path in [*_harness_files(layout), layout.root / "runner.py"]:
        rel = path.relative_to(layout.root).as_posix().encode()
        h.update(rel + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    digest = h.hexdigest()
    name = "_".join(stacks)[:100] or "runner"
    return f"{IMAGE_REPO}/{name}:ctx-{digest[:16]}", digest


def prepare_context(layout: Layout, packs: list[Pack], b: Base, cache_dir: Path, progress) -> Path:
    """The build context (made once per tag, under the cache): Dockerfile, the collection's runner code and
    locks, and the wheelhouse of every locked wheel for the base's Python."""
    stacks = stacks_of(packs)
    tag, digest = tag_for(layout, stacks, b)
    context = cache_dir / "docker" / f"context-{digest[:16]}"
    if (context / ".done").is_file():
        return context
    fsutil.remove_tree(context)
    (context / "collection").mkdir(parents=True)
    shutil.copy2(docker_dir(layout) / "Dockerfile", context / "Dockerfile")
    shutil.copy2(layout.root / "runner.py", context / "collection" / "runner.py")
    for path in _harness_files(layout):
        dest = context / "collection" / path.relative_to(layout.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    lock_list = _locks(layout, stacks, b.python)
    for lock in lock_list:
        dest = context / "collection" / lock.path.relative_to(layout.root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lock.path, dest)
        shutil.copy2(lock.path.parent / "requirements.in", dest.parent / "requirements.in")
    # the packs themselves: --provision reads their manifests to know their stacks
    for pack in packs:
        shutil.copytree(pack.dir, context / "collection" / "packs" / pack.dir.name)
    (context / "packs.txt").write_text("".join(f"{p.id}\n" for p in packs))
    house = cache_dir / "docker" / "wheelhouse"  # shared by every context: each wheel downloaded once
    pins = list({p.name + "==" + p.version + "|" + ",".join(p.hashes): p for lock in lock_list
                 for p in lock.pins}.values())
    need = []
    for pin in pins:
        try:
            wheels.from_folder([pin], house, b.python, "linux-x86_64")
        except wheels.WheelError:
            need.append(pin)
    if need:
        size = wheels.index_sizes(need, b.python, "linux-x86_64")
        mb = sum(size.values()) / 1e6
        progress(f"downloading {len(need)} locked wheels for Python {b.python} ({mb:,.0f} MB)")
        wheels.download(need, house, b.python, "linux-x86_64", progress)
    (context / "wheels").mkdir()
    for pin in pins:  # one at a time: two stacks may pin two versions of one name
        wheel = wheels.from_folder([pin], house, b.python, "linux-x86_64")[pin.name]
        if (context / "wheels" / wheel.name).exists():
            continue
        try:
            os.link(wheel, context / "wheels" / wheel.name)
        except OSError:
            shutil.copy2(wheel, context / "wheels" / wheel.name)
    (context / ".done").write_text(tag + "\n")
    return context
