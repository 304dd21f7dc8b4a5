"""--docker: the same runner command, run inside the pack's stack image (docker/<stack>/) with the GPU.

`python runner.py --pack 05 --docker [options]` builds the image of pack 05's stack through the Docker
SDK, or reuses it: the image tag is a hash of the build context (the stack's folder) and its build
arguments, so an unchanged stack is never rebuilt and a changed one never reuses a stale image. It then
runs `python runner.py --pack 05 [options]` in a container with every GPU, as the calling user. Every
host path the command reads or writes is bind-mounted at the same path inside the container: the
collection read-only, the source cache, the run folder and the output files (--json, --junit,
--markdown, --receipt's evidence/) writable, inputs (--source, --offline, --compare) read-only. So the
container prints the same verdicts and writes the same files, with the same paths in them, as a run on
the host would; its exit code is the runner's.

The build and run requests are plain data (`plan()`), converted to the SDK's types only when sent, so
they can be read and tested without a Docker engine. The SDK (`pip install -e '.[docker]'`) is imported
only when --docker is used."""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from ..core import manifest
from ..core.layout import Layout, default_cache_dir
from ..core.manifest import Pack
from ..envs import locks as stacks

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

IMAGE_REPO = "upstream-repro"
GPU_REQUEST = {"count": -1, "capabilities": [["gpu"]]}  # every GPU, like `docker run --gpus all`
HOME = "/tmp/repro-home"  # the calling user has no home in the image; compile caches go under it
# Options that never travel into the container: --docker itself, and --interpreter (a host Python;
# inside, the image's Python runs the reproducers).
NOT_FORWARDED = {"help", "docker", "interpreter"}
OUTPUTS = {"json", "junit", "markdown"}  # files the runner writes: their folders are mounted writable
HOST_ONLY = ("list", "lint", "status", "report", "export", "bundle")  # nothing to run on a GPU
# A host path is mounted at the same path inside; never over the image's own system folders.
_SYSTEM = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt/venv", "/proc", "/run", "/sbin",
           "/sys", "/usr", "/var/lib")


class ContainerError(Exception):
    """--docker could not build or start the container; the message names the pack, the stage and what to do."""


@dataclass
class Plan:
    """Everything --docker will do, as plain data."""

    packs: list[str]
    stack: str
    tag: str
    build: dict[str, Any]  # keyword arguments of the SDK's APIClient.build
    run: dict[str, Any]  # keyword arguments of the SDK's containers.run, mounts and GPUs as dicts
    make_dirs: list[str] = field(default_factory=list)  # created on the host before the run
    make_files: list[str] = field(default_factory=list)  # created empty: single files mounted writable
    notes: list[str] = field(default_factory=list)

    def who(self) -> str:
        return f"pack {', '.join(self.packs)} (stack {self.stack})"


def base_image(layout: Layout) -> tuple[str, str]:
    """(image tag, digest or '') from docker/base.toml: the base every stack builds FROM."""
    path = stacks.docker_dir(layout) / "base.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ContainerError(f"{path}: cannot be read ({exc})") from exc
    image, digest = data.get("image", ""), data.get("digest", "")
    if not image or (digest and not (digest.startswith("sha256:") and len(digest) == 71)):
        raise ContainerError(f"{path}: needs image = 'name:tag' and digest = '' or 'sha256:<64 hex>'")
    return image, digest


def context_hash(context: Path, buildargs: dict[str, str]) -> str:
    """sha256 over the build context (every file's path and bytes) and the build arguments."""
    h = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        h.update(path.relative_to(context).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    h.update(json.dumps(buildargs, sort_keys=True).encode())
    return h.hexdigest()


def build_request(stack: str, layout: Layout) -> dict[str, Any]:
    context = stacks.stack_dir(stack, layout)
    if not (context / "Dockerfile").is_file():
        raise ContainerError(f"stack '{stack}': {context / 'Dockerfile'} does not exist")
    image, digest = base_image(layout)
    buildargs = {"BASE_IMAGE": image, **({"BASE_DIGEST": digest} if digest else {})}
    content = context_hash(context, buildargs)
    return {
        "path": str(context), "dockerfile": "Dockerfile", "tag": f"{IMAGE_REPO}/{stack}:ctx-{content[:16]}",
        "buildargs": buildargs, "rm": True, "forcerm": True,
        "labels": {"org.upstream-repro.stack": stack, "org.upstream-repro.context-sha256": content,
                   "org.upstream-repro.base": image + (f"@{digest}" if digest else "")},
    }


def stack_of(packs: list[Pack], layout: Layout) -> str:
    """The one stack the selected packs share; --docker runs one container per call."""
    names = ", ".join(p.id for p in packs)
    missing = [p.id for p in packs if not p.stack]
    if missing:
        raise ContainerError(f"pack {', '.join(missing)}: no [requires].stack in pack.toml, so --docker does not "
                             f"know which image to run it in (stage: choosing the image); add one of: "
                             f"{', '.join(stacks.available(layout)) or '(docker/ has no stack)'}")
    by_stack: dict[str, list[str]] = {}
    for p in packs:
        by_stack.setdefault(p.stack, []).append(p.id)
    if len(by_stack) > 1:
        parts = "; ".join(f"{s}: {', '.join(ids)}" for s, ids in sorted(by_stack.items()))
        raise ContainerError(f"pack {names}: --docker runs the packs of one stack per call, these need several "
                             f"({parts}) (stage: choosing the image); run one call per stack with --pack")
    return packs[0].stack


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
    stack = stack_of(packs, layout)
    who = f"pack {', '.join(p.id for p in packs)} (stack {stack})"
    build = build_request(stack, layout)
    root = layout.root.resolve()
    cache_dir = (args.cache_dir or default_cache_dir()).resolve()
    run_dir = (args.run_dir or layout.runs / (stamp or datetime.now().strftime("%Y%m%d-%H%M%S"))).resolve()
    evidence = layout.evidence.resolve() if getattr(args, "receipt", False) else None
    mounts, make_dirs, make_files = mounts_for(root, args, parser, cache_dir, run_dir, evidence)
    for m in mounts:
        _check_target(Path(m["target"]), who)
    command = ["python", str(root / "runner.py"),
               *forwarded_argv(args, parser, {"cache_dir": cache_dir, "run_dir": run_dir})]
    environment = {"HOME": HOME, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
                   "REPRO_CONTAINER_IMAGE": build["tag"]}
    if "CUDA_VISIBLE_DEVICES" in env:
        environment["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"]
    if uid_gid is None and hasattr(os, "getuid"):
        uid_gid = (os.getuid(), os.getgid())
    run = {
        "image": build["tag"], "command": command, "working_dir": str(root), "environment": environment,
        "mounts": mounts, "device_requests": [GPU_REQUEST], "detach": True, "init": True,
        "labels": {"org.upstream-repro.packs": ",".join(p.name for p in packs)},
    }
    if uid_gid is not None:  # files it writes belong to the caller, as on the host
        run["user"] = f"{uid_gid[0]}:{uid_gid[1]}"
    notes = []
    if "BASE_DIGEST" not in build["buildargs"]:
        notes.append(f"base image {build['buildargs']['BASE_IMAGE']} is pinned by tag only: docker/base.toml "
                     "has no digest yet (docker/README.md)")
    if getattr(args, "interpreter", sys.executable) != sys.executable:
        notes.append(f"--interpreter {args.interpreter} is a host Python and is not used: the image's Python runs "
                     "the reproducers")
    return Plan([p.id for p in packs], stack, build["tag"], build, run, make_dirs, make_files, notes)


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


def ensure_image(client: Any, sdk: Any, p: Plan, say) -> str:
    """Reuse the image of this exact context, or build it; returns 'reused' or 'built'."""
    try:
        client.images.get(p.tag)
        say(f"image {p.tag}: reusing it (built from this very context)")
        return "reused"
    except sdk.errors.ImageNotFound:
        pass
    except sdk.errors.DockerException as exc:
        raise ContainerError(f"{p.who()}: looking up image {p.tag} failed ({exc}) (stage: build)") from exc
    say(f"image {p.tag}: building it from {p.build['path']} (minutes: torch and the CUDA wheels are large)")
    tail: list[str] = []
    try:
        for chunk in client.api.build(**p.build, decode=True):
            if "error" in chunk:
                raise ContainerError(
                    f"{p.who()}: building image {p.tag} failed: {str(chunk['error']).strip()} (stage: build); "
                    f"the last build lines: {' | '.join(tail[-5:])}; check docker/{p.stack}/Dockerfile and its "
                    f"requirements.txt (regenerate it with python -m harness.stacks --lock {p.stack}), and that "
                    "the base image and the package index can be reached from the build")
            line = str(chunk.get("stream", "")).rstrip()
            if line:
                tail.append(line)
                say(f"build: {line}")
        client.images.get(p.tag)
    except sdk.errors.DockerException as exc:
        raise ContainerError(f"{p.who()}: building image {p.tag} failed ({exc}) (stage: build); the last build "
                             f"lines: {' | '.join(tail[-5:])}") from exc
    return "built"


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
    p = plan(_selected(args, layout), args, parser, layout)
    for note in p.notes:
        say(f"note: {note}")
    sdk = sdk or import_sdk(p.who())
    client = connect(sdk, p.who())
    ensure_image(client, sdk, p, say)
    return run_container(client, sdk, p, say, out or sys.stdout, err or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.container [runner options]`: print what `runner.py [options] --docker` would
    send to the Docker engine (the build and run requests), as JSON; no engine or SDK needed."""
    from ..cli.main import build_parser  # noqa: PLC0415 - cli imports this module

    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    layout = Layout()
    try:
        p = plan(_selected(args, layout), args, parser, layout)
    except (ContainerError, manifest.ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(p), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
