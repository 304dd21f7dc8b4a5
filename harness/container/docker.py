"""--docker: the same runner command, run inside the image of the selected packs' stacks, with the GPU where
a pack needs one.

`python runner.py --pack 05 --docker [options]` builds the image of pack 05's stacks (container/image.py:
one Dockerfile, a build context the runner prepares on the host, each stack's environment provisioned at
build time from the locked wheels), or reuses it: the image tag is a digest of everything the image holds,
so an unchanged set of inputs is never rebuilt and a changed one never reuses a stale image. It then runs
`python runner.py --pack 05 [options]` in a container, as the calling user. Every host path the command
reads or writes is bind-mounted at the same path inside: the collection read-only, the source cache, the run
folder and the output files (--json, --junit, --markdown, --receipt's evidence/) writable, inputs (--source,
--offline, --compare) read-only. So the container prints the same verdicts and writes the same files, with
the same paths in them, as a run on the host would; its exit code is the runner's.

The build and run requests are plain data (`plan()`), converted to the SDK's types only when sent, so
they can be read and tested without a Docker engine. The SDK (`pip install -e '.[docker]'`) is imported
only when --docker is used."""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from ..core import fsutil, manifest
from ..core.layout import Layout, default_cache_dir
from ..core.manifest import Pack
from ..envs import wheels
from . import image as images

GPU_REQUEST = {"count": -1, "capabilities": [["gpu"]]}  # every GPU, like `docker run --gpus all`
HOME = "/tmp/repro-home"  # the calling user has no home in the image; compile caches go under it
# Options that never travel into the container: --docker itself; --interpreter and --env-dir are host paths
# (inside, the image's Python and environments run the reproducers).
NOT_FORWARDED = {"help", "docker", "interpreter", "env_dir"}
OUTPUTS = {"json", "junit", "markdown"}  # files the runner writes: their folders are mounted writable
HOST_ONLY = ("list", "lint", "status", "report", "export", "bundle", "provision")  # nothing to run in a container
# A host path is mounted at the same path inside; never over the image's own system folders.
_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt/repro", "/proc", "/run", "/sbin",
           "/sys", "/usr", "/var/lib")


class ContainerError(Exception):
    """--docker could not build or start the container; the message names the pack, the stage and what to do."""


@dataclass
class Plan:
    """Everything --docker will do, as plain data."""

    packs: list[str]
    stacks: list[str]
    tag: str
    build: dict[str, Any]  # keyword arguments of the SDK's APIClient.build
    run: dict[str, Any]  # keyword arguments of the SDK's containers.run, mounts and GPUs as dicts
    make_dirs: list[str] = field(default_factory=list)  # created on the host before the run
    make_files: list[str] = field(default_factory=list)  # created empty: single files mounted writable
    notes: list[str] = field(default_factory=list)

    needs_gpu: bool = False

    def who(self) -> str:
        return f"pack {', '.join(self.packs)} (stacks {', '.join(self.stacks)})"


def build_request(packs: list[Pack], layout: Layout, cache_dir: Path) -> dict[str, Any]:
    """The build's keyword arguments (APIClient.build); its context folder is prepared only when building."""
    try:
        stacks = images.stacks_of(packs)
        base = images.base(layout)
        tag, digest = images.tag_for(layout, stacks, base)
    except images.ImageError as exc:
        raise ContainerError(f"pack {', '.join(p.id for p in packs)}: {exc}") from exc
    return {
        "path": str(cache_dir / "docker" / f"context-{digest[:16]}"), "dockerfile": "Dockerfile", "tag": tag,
        "buildargs": {"BASE_IMAGE": base.ref, "PYTHON": base.python}, "rm": True, "forcerm": True,
        "labels": {"org.upstream-repro.stacks": ",".join(stacks), "org.upstream-repro.content-sha256": digest,
                   "org.upstream-repro.base": base.ref},
    }


def _value(v: Any) -> str:
    return str(Path(v).resolve()) if isinstance(v, Path) else str(v)


def forwarded_argv(args: argparse.Namespace, parser: argparse.ArgumentParser,
                   overrides: dict[str, Any]) -> list[str]:
    """The runner's options for the container: every option given on the host (new ones included,
    from the parser itself), paths made absolute, `overrides` (dest -> value) set, and NOT_FORWARDED left out."""
    argv: list[str] = []
    for action in parser._actions:
        dest = action.dest
        if not action.option_strings or dest in NOT_FORWARDED:
            continue
        value = overrides.get(dest, getattr(args, dest, None))
        if dest not in overrides and (value is None or value == action.default):
            continue
        opt = max(action.option_strings, key=len)
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
            argv.append(opt)
        elif isinstance(action, argparse._CountAction):
            argv += [opt] * int(value)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                argv += [opt, _value(item)]
        elif isinstance(value, (list, tuple)):
            argv += [opt, *map(_value, value)]
        else:
            argv += [opt, _value(value)]
    return argv


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _check_target(path: Path, who: str) -> None:
    posix = PurePosixPath(path.as_posix())
    if str(posix) in ("/", "/tmp", "/opt", "/var") or any(
            str(posix) == s or str(posix).startswith(s + "/") for s in _SYSTEM):
        raise ContainerError(f"{who}: {path} would be mounted over the image's own {posix} (stage: planning the "
                             "run); use a folder elsewhere (a home or work folder) for it")


def mounts_for(root: Path, args: argparse.Namespace, parser: argparse.ArgumentParser, cache_dir: Path,
               run_dir: Path, evidence: Path | None) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(mounts, folders to create, files to create). Each host path is mounted at the same path."""
    wanted: list[tuple[Path, bool]] = [(root, True), (cache_dir, False), (run_dir, False)]
    make_dirs, make_files = [str(cache_dir), str(run_dir)], []
    if evidence is not None:
        wanted.append((evidence, False))
        make_dirs.append(str(evidence))
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in NOT_FORWARDED or action.dest in ("cache_dir", "run_dir") or value is None:
            continue
        paths = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, Path)]
        for path in (p.resolve() for p in paths):
            if action.dest in OUTPUTS:
                if _inside(path.parent, root):  # the collection is read-only: mount the file itself
                    wanted.append((path, False))
                    make_files.append(str(path))
                else:
                    wanted.append((path.parent, False))
                make_dirs.append(str(path.parent))
            elif path.exists():  # inputs; a missing one is left for the runner to report
                wanted.append((path, True))
    mounts: list[dict[str, Any]] = []
    for path, read_only in sorted(wanted, key=lambda w: (len(w[0].parts), w[1])):
        covered = [m for m in mounts if _inside(path, Path(m["source"]))]
        # already reachable: under a writable mount, or read-only under any mount (the collection's
        # own subfolders that must be writable, like runs/ and evidence/, are mounted over it)
        if any(not m["read_only"] or read_only for m in covered):
            continue
        mounts.append({"type": "bind", "source": str(path), "target": str(path), "read_only": read_only})
    return mounts, sorted(set(make_dirs)), make_files


def plan(packs: list[Pack], args: argparse.Namespace, parser: argparse.ArgumentParser,
         layout: Layout, env: dict[str, str] | None = None, uid_gid: tuple[int, int] | None = None,
         stamp: str | None = None) -> Plan:
    """The build and run requests for this command, as plain data (nothing is touched)."""
    env = os.environ if env is None else env
    root = layout.root.resolve()
    cache_dir = (args.cache_dir or default_cache_dir()).resolve()
    build = build_request(packs, layout, cache_dir)
    stacks = build["labels"]["org.upstream-repro.stacks"].split(",")
    who = f"pack {', '.join(p.id for p in packs)} (stacks {', '.join(stacks)})"
    run_dir = (args.run_dir or layout.runs / (stamp or fsutil.run_stamp())).resolve()
    evidence = layout.evidence.resolve() if getattr(args, "receipt", False) else None
    mounts, make_dirs, make_files = mounts_for(root, args, parser, cache_dir, run_dir, evidence)
    for m in mounts:
        _check_target(Path(m["target"]), who)
    command = [images.RUNNER_PYTHON, str(root / "runner.py"),
               *forwarded_argv(args, parser, {"cache_dir": cache_dir, "run_dir": run_dir})]
    environment = {"HOME": HOME, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
                   "REPRO_CONTAINER_IMAGE": build["tag"], "REPRO_ENV_DIR": images.ENV_DIR}
    if "CUDA_VISIBLE_DEVICES" in env:
        environment["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"]
    if uid_gid is None and hasattr(os, "getuid"):
        uid_gid = (os.getuid(), os.getgid())
    needs_gpu = any(p.gpu for p in packs)
    run = {
        "image": build["tag"], "command": command, "working_dir": str(root), "environment": environment,
        "mounts": mounts, "device_requests": [GPU_REQUEST] if needs_gpu else [], "detach": True, "init": True,
        "labels": {"org.upstream-repro.packs": ",".join(p.name for p in packs)},
    }
    if uid_gid is not None:  # files it writes belong to the caller, as on the host
        run["user"] = f"{uid_gid[0]}:{uid_gid[1]}"
    notes = []
    if "@" not in build["buildargs"]["BASE_IMAGE"]:
        notes.append(f"base image {build['buildargs']['BASE_IMAGE']} is pinned by tag only: docker/base.toml "
                     "has no digest yet (docs/containers.md)")
    if getattr(args, "interpreter", sys.executable) != sys.executable:
        notes.append(f"--interpreter {args.interpreter} is a host Python and is not used: the image's Python runs "
                     "the reproducers")
    if not needs_gpu:
        notes.append("no selected pack needs a GPU: the container gets none")
    return Plan([p.id for p in packs], stacks, build["tag"], build, run, make_dirs, make_files, notes, needs_gpu)


def sdk_run_kwargs(run: dict[str, Any], sdk: Any) -> dict[str, Any]:
    """The plain run request with the SDK's Mount and DeviceRequest objects in place of dicts."""
    kwargs = dict(run)
    kwargs["mounts"] = [sdk.types.Mount(target=m["target"], source=m["source"], type=m["type"],
                                        read_only=m["read_only"]) for m in run["mounts"]]
    kwargs["device_requests"] = [sdk.types.DeviceRequest(**d) for d in run["device_requests"]]
    return kwargs


def import_sdk(who: str) -> Any:
    try:
        import docker  # noqa: PLC0415 - optional: only --docker needs it
    except ImportError:
        docker = None
    # Without the SDK, `import docker` from the collection's root finds its docker/ folder (a namespace package).
    if docker is None or not hasattr(docker, "from_env"):
        raise ContainerError(f"{who}: --docker needs the Docker SDK for Python, which is not installed here "
                             "(stage: loading the Docker SDK); install it with pip install -e '.[docker]', "
                             "or run without --docker")
    return docker


def connect(sdk: Any, who: str) -> Any:
    try:
        client = sdk.from_env()
        client.ping()
    except sdk.errors.DockerException as exc:
        raise ContainerError(f"{who}: the Docker engine cannot be reached ({exc}) (stage: connecting to the "
                             "engine); start the Docker daemon or set DOCKER_HOST to it, check that this user may "
                             "use it (the docker group), or run without --docker") from exc
    return client


def ensure_image(client: Any, sdk: Any, p: Plan, say, prepare: Callable[[], None] | None = None) -> str:
    """Reuse the image of these exact inputs, or prepare its context and build it; 'reused' or 'built'."""
    try:
        client.images.get(p.tag)
        say(f"image {p.tag}: reusing it (built from this very context)")
        return "reused"
    except sdk.errors.ImageNotFound:
        pass
    except sdk.errors.DockerException as exc:
        raise ContainerError(f"{p.who()}: looking up image {p.tag} failed ({exc}) (stage: build)") from exc
    if prepare is not None:
        prepare()
    say(f"image {p.tag}: building it from {p.build['path']} (minutes: torch and the CUDA wheels are large)")
    try:
        _build(client, sdk, p, say)
    finally:
        prune_build_stages(client, sdk, say)
    prune_older(client, sdk, p.tag, say)
    return "built"


def _build(client: Any, sdk: Any, p: Plan, say) -> None:
    tail: list[str] = []
    try:
        for chunk in client.api.build(**p.build, decode=True):
            if "error" in chunk:
                raise ContainerError(
                    f"{p.who()}: building image {p.tag} failed: {str(chunk['error']).strip()} (stage: build); "
                    f"the last build lines: {' | '.join(tail[-5:])}; check docker/Dockerfile, the base image "
                    "(docker/base.toml or REPRO_DOCKER_BASE) and the stacks' locks (python -m harness.envs.locks)")
            line = str(chunk.get("stream", "")).rstrip()
            if line:
                tail.append(line)
                say(f"build: {line}")
        client.images.get(p.tag)
    except sdk.errors.DockerException as exc:
        raise ContainerError(f"{p.who()}: building image {p.tag} failed ({exc}) (stage: build); the last build "
                             f"lines: {' | '.join(tail[-5:])}") from exc


BUILD_STAGE_LABEL = "org.upstream-repro.stage=build"  # docker/Dockerfile's build stage


def prune_build_stages(client: Any, sdk: Any, say) -> int:
    """Remove the untagged build-stage images our builds leave (each several GB), after a build whether it
    succeeded or not (a build that ran out of disk frees it again); the bytes reclaimed."""
    try:
        got = client.images.prune(filters={"dangling": True, "label": BUILD_STAGE_LABEL}) or {}
    except sdk.errors.DockerException:
        return 0
    freed = int(got.get("SpaceReclaimed") or 0)
    if freed:
        say(f"removed the build stage's untagged images ({freed / 1e9:.1f} GB)")
    return freed


def prune_older(client: Any, sdk: Any, tag: str, say) -> list[str]:
    """Remove the images of the same stacks built from older contexts (each a few GB: every change to the
    runner's code makes a new context tag). Only images that carry no other tag than such older ones are
    removed; one a container still uses is left. The tags removed."""
    repo = tag.rsplit(":", 1)[0]
    removed: list[str] = []
    try:
        images = client.images.list(name=repo)
    except sdk.errors.DockerException:
        return removed
    for img in images:
        tags = list(getattr(img, "tags", []) or [])
        if not tags or tag in tags or not all(t.startswith(f"{repo}:ctx-") for t in tags):
            continue
        try:
            client.images.remove(img.id)
        except sdk.errors.DockerException:
            continue
        removed += tags
    if removed:
        say(f"removed {len(removed)} image(s) of these stacks built from older contexts: {', '.join(removed)}")
    return removed


def run_container(client: Any, sdk: Any, p: Plan, say, out: TextIO, err: TextIO) -> int:
    """Run the runner in the container, relay its stdout and stderr as they come; its exit code."""
    for folder in p.make_dirs:
        Path(folder).mkdir(parents=True, exist_ok=True)
    for file in p.make_files:
        Path(file).touch()
    say(f"running in {p.tag}: {' '.join(p.run['command'][1:])}")
    try:
        container = client.containers.run(**sdk_run_kwargs(p.run, sdk))
    except sdk.errors.DockerException as exc:
        hint = ("install the NVIDIA Container Toolkit on this host and restart Docker, so that containers can "
                "have GPUs" if "gpu" in str(exc).lower() or "device driver" in str(exc).lower()
                else "see the engine's message")
        raise ContainerError(f"{p.who()}: the container did not start ({exc}) (stage: run); {hint}") from exc
    try:
        decoders = (codecs.getincrementaldecoder("utf-8")("replace"), codecs.getincrementaldecoder("utf-8")("replace"))
        for chunk_out, chunk_err in container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True):
            for chunk, stream, decoder in ((chunk_out, out, decoders[0]), (chunk_err, err, decoders[1])):
                if chunk:
                    stream.write(decoder.decode(chunk))
                    stream.flush()
        status = container.wait()
        return int(status.get("StatusCode", 1))
    except KeyboardInterrupt:
        container.stop(timeout=10)
        raise
    finally:
        try:
            container.remove(force=True)
        except sdk.errors.DockerException:
            pass


def _selected(args: argparse.Namespace, layout: Layout) -> list[Pack]:
    host_only = [f"--{name}" for name in HOST_ONLY if getattr(args, name, None)]
    if host_only:
        raise ContainerError(f"{' '.join(host_only)} runs on this host and needs no GPU: run it without --docker")
    if getattr(args, "bisect", None):
        folders = manifest.select([args.bisect], layout)
    elif args.all:
        folders = manifest.discover(layout)
    elif args.pack:
        folders = manifest.select(args.pack, layout)
    else:
        raise ContainerError("--docker runs packs: give --pack NN, --all or --bisect NN")
    return [manifest.load_pack(f, layout) for f in folders]


def cli_run(args: argparse.Namespace, parser: argparse.ArgumentParser, layout: Layout, say,
            out: TextIO | None = None, err: TextIO | None = None, sdk: Any = None) -> int:
    """runner.py ... --docker: returns the runner's exit code from inside the container.
    Raises ContainerError (cannot build or start) and manifest.ManifestError (bad selection)."""
    packs = _selected(args, layout)
    p = plan(packs, args, parser, layout)
    for note in p.notes:
        say(f"note: {note}")
    sdk = sdk or import_sdk(p.who())
    client = connect(sdk, p.who())
    cache_dir = (args.cache_dir or default_cache_dir()).resolve()

    def prepare() -> None:
        try:
            images.prepare_context(layout, packs, images.base(layout), cache_dir, say)
        except (images.ImageError, wheels.WheelError, OSError) as exc:
            raise ContainerError(f"{p.who()}: preparing the build context failed ({exc}) (stage: build); the host "
                                 "needs the package index to fetch the locked wheels once") from exc

    ensure_image(client, sdk, p, say, prepare)
    return run_container(client, sdk, p, say, out or sys.stdout, err or sys.stderr)


def plan_json(args: argparse.Namespace, parser: argparse.ArgumentParser, layout: Layout) -> str:
    """What `runner.py [options] --docker` would send to the Docker engine, as JSON (no engine or SDK needed)."""
    return json.dumps(asdict(plan(_selected(args, layout), args, parser, layout)), indent=2)
