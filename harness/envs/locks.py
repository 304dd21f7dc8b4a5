"""Stacks and their locks: the single source of truth for what a pack's reproducer imports.

`stacks/<stack>/requirements.in` says what the stack's packs need (by hand); `stacks/<stack>/lock-py<X.Y>-
<platform>.txt` is the full dependency closure for that Python and platform, every package pinned with
`==` and the sha256 of its files, generated from the .in with uv (`uv pip compile --generate-hashes`,
a resolver that is maintained for exactly this, run for each Python version and platform):

    python -m harness.envs.locks --lock [STACK ...] [--python X.Y ...] [--upgrade]

Regenerating keeps the committed pins (uv prefers the versions of the output file it rewrites) unless
--upgrade is given, so the same .in gives the same lock. The lock's header records the sha256 of the .in
it came from: a test fails when a .in changed and its locks were not regenerated, and (where the package
index can be reached) when re-resolving the .in would pin something else. The index is the one pip is
configured with, read from pip's own configuration and passed to uv.

The runtime: torch, triton and the CUDA libraries torch loads (nvidia-*, cuda-*) are the pins an
environment may take from the machine instead of installing (envs/provision.py says when)."""

from __future__ import annotations

import argparse
import hashlib
import os
import platform as platform_mod
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..core.layout import Layout
from ..sources import pkgindex
from .builds import Build, BuildError
from .builds import load as load_builds

STACK_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
PYTHONS = ("3.11", "3.12", "3.13")  # numpy 2.5 (the receipts') has no wheels for 3.10
# Our platform names -> uv's --python-platform and the wheel tags pip may pick for it (glibc >= 2.28:
# torch's own wheels need it; Debian 10+, Ubuntu 20.04+, RHEL 8+).
PLATFORMS = {"linux-x86_64": "x86_64-manylinux_2_28"}
WHEEL_TAGS = {"linux-x86_64": ("manylinux_2_28_x86_64", *(f"manylinux_2_{n}_x86_64" for n in range(17, 28)),
                               "manylinux2014_x86_64", "manylinux1_x86_64")}
# nvidia-cudnn-frontend is not torch's: a header and Python package that TE's extension needs installed
RUNTIME_RE = re.compile(r"^(torch|triton|nvidia-(?!cudnn-frontend$).+|cuda-.+)$")
_HEADER_RE = re.compile(r"requirements\.in sha256: ([0-9a-f]{64})")
_PIN_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9._+!-]+)"
                     r"(?P<opts>(\s+--hash=\S+)+)$")
_HASH_RE = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


class StackError(Exception):
    """A stack or lock that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    hashes: tuple[str, ...]  # "sha256:<hex>", every file of that version uv listed

    def line(self) -> str:
        return f"{self.name}=={self.version} " + " ".join(f"--hash={h}" for h in self.hashes)

    def allows(self, sha256: str) -> bool:
        return f"sha256:{sha256}" in self.hashes


@dataclass(frozen=True)
class Lock:
    stack: str
    python: str
    platform: str
    path: Path
    sha256: str  # of the lock file
    source_sha256: str | None  # of the requirements.in it was generated from (its header)
    pins: tuple[Pin, ...]
    builds: tuple[Build, ...] = ()  # stacks/<stack>/builds.toml: built from source in the environment
    builds_sha256: str | None = None

    def pin(self, name: str) -> Pin | None:
        key = canonicalize_name(name)
        return next((p for p in self.pins if p.name == key), None)

    @property
    def runtime(self) -> tuple[Pin, ...]:
        """torch and the binary runtime that comes with it (empty when the stack has no torch)."""
        if self.pin("torch") is None:
            return ()
        return tuple(p for p in self.pins if RUNTIME_RE.match(p.name))

    @property
    def cuda(self) -> str | None:
        """The CUDA version (X.Y) of the locked runtime, from its CUDA runtime library's version."""
        pin = self.pin("nvidia-cuda-runtime") or next(
            (p for p in self.pins if p.name.startswith("nvidia-cuda-runtime")), None)
        return ".".join(pin.version.split(".")[:2]) if pin else None

    def build_key(self, build: Build) -> str:
        """The key of one of its builds in an environment of this lock: its Python, platform, torch, CUDA."""
        torch = self.pin("torch")
        return build.key(self.python, self.platform, torch.version if torch else None, self.cuda)

    def describe(self) -> str:
        return f"stack {self.stack} (lock {self.path.name}, sha256 {self.sha256[:12]}, {len(self.pins)} pins)"


def stacks_dir(layout: Layout) -> Path:
    return layout.root / "stacks"


def stack_dir(stack: str, layout: Layout) -> Path:
    if not STACK_RE.match(stack):
        raise StackError(f"stack name '{stack}' is not a stacks/ folder name (lower-case letters, digits, '.', '-')")
    return stacks_dir(layout) / stack


def available(layout: Layout) -> list[str]:
    """Every stack: a stacks/<stack>/ folder with a requirements.in."""
    root = stacks_dir(layout)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if STACK_RE.match(p.name) and (p / "requirements.in").is_file())


def lock_path(layout: Layout, stack: str, python: str, platform: str) -> Path:
    return stack_dir(stack, layout) / f"lock-py{python}-{platform}.txt"


def host_platform() -> str | None:
    """This machine's platform name in PLATFORMS, or None (no lock is made for it)."""
    if sys.platform != "linux" or platform_mod.machine() not in ("x86_64", "AMD64"):
        return None
    libc, version = platform_mod.libc_ver()
    try:
        if libc == "glibc" and Version(version) < Version("2.28"):
            return None
    except InvalidVersion:
        return None
    return "linux-x86_64"


def parse(text: str, where: str) -> tuple[tuple[Pin, ...], str | None]:
    """(pins, the .in's sha256 from the header) of a lock. Every requirement must be `name==version` with
    at least one `--hash=sha256:<64 hex>` (uv writes continuation lines; they are joined); anything else
    (ranges, URLs, -r, -e, other options, markers, duplicates) is refused with the line number."""
    source = None
    pins: list[Pin] = []
    seen: dict[str, int] = {}
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.lstrip().startswith("#"):
            found = _HEADER_RE.search(raw)
            source = found.group(1) if found and source is None else source
            continue
        line = raw.split(" #", 1)[0].rstrip()
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        buf += line.strip()
        if buf.strip():
            logical.append((start, buf.strip()))
        buf = ""
    if buf.strip():
        raise StackError(f"{where}:{start}: the file ends inside a continued line")
    for number, line in logical:
        match = _PIN_RE.match(line)
        if not match:
            raise StackError(f"{where}:{number}: '{line[:80]}' is not 'name==version --hash=sha256:...'")
        hashes = match.group("opts").split()
        bad = [h for h in hashes if not _HASH_RE.match(h)]
        if bad:
            raise StackError(f"{where}:{number}: '{bad[0][:80]}' is not --hash=sha256:<64 lower-case hex digits>")
        key = canonicalize_name(match.group("name"))
        if key in seen:
            raise StackError(f"{where}:{number}: {key} is pinned twice (also on line {seen[key]})")
        seen[key] = number
        pins.append(Pin(key, match.group("version"), tuple(h.removeprefix("--hash=") for h in hashes)))
    if not pins:
        raise StackError(f"{where}: no pinned requirement")
    return tuple(pins), source


def load(layout: Layout, stack: str, python: str, platform: str) -> Lock:
    path = lock_path(layout, stack, python, platform)
    if not stack_dir(stack, layout).is_dir():
        raise StackError(f"stack '{stack}' does not exist (stacks/: {', '.join(available(layout)) or 'none'})")
    if not path.is_file():
        have = sorted(p.name for p in stack_dir(stack, layout).glob("lock-py*.txt"))
        raise StackError(f"stack {stack} has no lock for Python {python} on {platform} (it has: "
                         f"{', '.join(have) or 'none'}); run the reproducers with one of those Pythons "
                         f"(--interpreter), or make that lock with python -m harness.envs.locks --lock {stack} "
                         f"--python {python}")
    data = path.read_bytes()
    pins, source = parse(data.decode("utf-8", "replace"), str(path))
    try:
        built, built_sha = load_builds(stack_dir(stack, layout))
    except BuildError as exc:
        raise StackError(str(exc)) from exc
    both = [b.requirement for b in built if b.name in {p.name for p in pins}]
    if both:
        raise StackError(f"stack {stack}: {', '.join(both)} is both locked and built from source (builds.toml)")
    return Lock(stack, python, platform, path, hashlib.sha256(data).hexdigest(), source, pins, built, built_sha)


OVERRIDES = "overrides.txt"  # uv --override: a pin that replaces what a dependency asks for


def source_sha256(layout: Layout, stack: str) -> str:
    """The sha256 a lock's header records: of requirements.in (and of overrides.txt after it, where one
    exists: changing either makes the locks stale)."""
    folder = stack_dir(stack, layout)
    data = (folder / "requirements.in").read_bytes()
    if (folder / OVERRIDES).is_file():
        data += b"\0" + (folder / OVERRIDES).read_bytes()
    return hashlib.sha256(data).hexdigest()


def stale(layout: Layout, stack: str) -> list[str]:
    """Locks of the stack whose header names another requirements.in than the current one (no network)."""
    want = source_sha256(layout, stack)
    out = []
    for path in sorted(stack_dir(stack, layout).glob("lock-py*.txt")):
        _, got = parse(path.read_text(encoding="utf-8"), str(path))
        if got != want:
            out.append(f"{path.relative_to(layout.root)} was made from another requirements.in "
                       f"({(got or 'none')[:12]}, now {want[:12]}): python -m harness.envs.locks --lock {stack}")
    return out


# ---------------------------------------------------------------- generating locks with uv


def uv_command() -> list[str]:
    try:
        import uv  # noqa: F401, PLC0415 - the uv package ships the binary and finds it
    except ImportError:
        found = shutil.which("uv")
        if not found:
            raise StackError("locking needs uv (pip install uv, or pip install -e '.[test]')") from None
        return [found]
    return [sys.executable, "-m", "uv"]


def compile_command(stack: str, python: str, platform: str, requirements_in: Path, output: Path, digest: str,
                    upgrade: bool = False, overrides: Path | None = None) -> list[str]:
    index = pkgindex.index_config()
    cmd = [*uv_command(), "pip", "compile", "--quiet", "--generate-hashes", "--only-binary", ":all:",
           "--python-version", python, "--python-platform", PLATFORMS[platform], "--no-emit-index-url",
           "--custom-compile-command",
           f"python -m harness.envs.locks --lock {stack} --python {python}  # requirements.in sha256: {digest}",
           "-o", str(output), str(requirements_in)]
    if overrides is not None:
        cmd += ["--override", str(overrides)]
    if index.index_urls:
        cmd += ["--index-url", index.index_urls[0]]
        cmd += [a for u in index.index_urls[1:] for a in ("--extra-index-url", u)]
    if upgrade:
        cmd.append("--upgrade")
    return cmd


def generate(layout: Layout, stack: str, python: str, platform: str = "linux-x86_64", upgrade: bool = False,
             output: Path | None = None) -> Path:
    """(Re)write the lock of stack for Python and platform (or `output`, seeded with the committed lock)."""
    folder = stack_dir(stack, layout)
    source = folder / "requirements.in"
    if not source.is_file():
        raise StackError(f"{source}: missing; a stack lists its top-level requirements there")
    target = lock_path(layout, stack, python, platform)
    output = output or target
    if output != target and target.is_file():
        shutil.copy2(target, output)  # uv keeps the versions of the file it rewrites
    env = dict(os.environ)
    cert = pkgindex.index_config().cert
    if cert:
        env.setdefault("SSL_CERT_FILE", cert)
    with tempfile.TemporaryDirectory(prefix="repro-lock-") as tmp:
        # uv writes paths relative to the working folder into its annotations: run it in the stack's folder
        cmd = compile_command(stack, python, platform, Path("requirements.in"), output.resolve(),
                              source_sha256(layout, stack), upgrade,
                              Path(OVERRIDES) if (folder / OVERRIDES).is_file() else None)
        proc = subprocess.run(cmd, cwd=folder, env={**env, "UV_CACHE_DIR": env.get("UV_CACHE_DIR", str(Path(tmp)))},
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"[{stack}] uv could not resolve {source} for Python {python} on {platform}: "
                         + "\n".join(proc.stderr.strip().splitlines()[-15:]))
    parse(output.read_text(encoding="utf-8"), str(output))  # what uv wrote must pass our own check
    return output


# ---------------------------------------------------------------- what packs need


def pack_stacks(pack) -> tuple[str, ...]:
    """Every stack a pack's stages run in: its own, and a compiler pack's fixed-release stack."""
    out = [pack.stack] if pack.stack else []
    if pack.compiler is not None and pack.compiler.fixed_stack:
        out.append(pack.compiler.fixed_stack)
    return tuple(out)


def pack_problems(pack, layout: Layout) -> list[str]:
    """--lint: the pack's stacks exist, their locks are current for their .in, and every lock pins what the
    pack needs: [requires].python_deps within range, [requires].wheels (and a compiler pack's wheel sets,
    each in its own stack) at exactly their versions."""
    problems: list[str] = []
    names = pack_stacks(pack)
    wants: dict[str, tuple[str, ...]] = {}
    if pack.stack:
        base = pack.compiler.base_wheels if pack.compiler else ()
        wants[pack.stack] = (*pack.python_deps, *pack.wheels, *base)
    if pack.compiler is not None and pack.compiler.fixed_stack:
        wants[pack.compiler.fixed_stack] = (*pack.python_deps, *pack.compiler.fixed_wheels)
    for stack in names:
        try:
            folder = stack_dir(stack, layout)
        except StackError as exc:
            problems.append(f"{pack.name}: {exc}")
            continue
        if not (folder / "requirements.in").is_file():
            known = ", ".join(available(layout)) or "none"
            problems.append(f"{pack.name}: stack '{stack}' does not exist (stacks: {known})")
            continue
        locks = sorted(folder.glob("lock-py*.txt"))
        if not locks:
            problems.append(f"{pack.name}: stack '{stack}' has no lock: python -m harness.envs.locks --lock {stack}")
        problems += [f"{pack.name}: {p}" for p in stale(layout, stack)]
        for path in locks:
            try:
                pins, _ = parse(path.read_text(encoding="utf-8"), str(path))
            except StackError as exc:
                problems.append(f"{pack.name}: {exc}")
                continue
            have = {p.name: p.version for p in pins}
            for spec in wants.get(stack, ()):
                try:
                    req = Requirement(spec)
                except InvalidRequirement:
                    continue  # the manifest check reports it
                got = have.get(canonicalize_name(req.name))
                if got is None:
                    problems.append(f"{pack.name}: {path.name} of stack '{stack}' does not pin {req.name} "
                                    f"(the pack needs {spec})")
                elif not req.specifier.contains(got, prereleases=True):
                    problems.append(f"{pack.name}: {path.name} of stack '{stack}' pins {req.name}=={got}, "
                                    f"the pack needs {spec}")
    return problems


def main(argv: list[str] | None = None, layout: Layout | None = None) -> int:
    layout = layout or Layout()
    p = argparse.ArgumentParser(prog="python -m harness.envs.locks",
                                description="Check or regenerate the stacks' locks (stacks/<stack>/lock-py*.txt).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lock", nargs="*", metavar="STACK", help="regenerate these stacks' locks (all when none is named)")
    p.add_argument("--python", action="append", metavar="X.Y", help=f"with --lock: these Pythons (default: {PYTHONS})")
    p.add_argument("--upgrade", action="store_true", help="with --lock: re-resolve instead of keeping the pins")
    p.add_argument("--packs", metavar="STACK", help="print the ids of the packs that run in this stack (a nightly "
                   "job per stack), and stop")
    args = p.parse_args(argv)
    stacks = available(layout)
    if args.packs:
        from ..core import manifest  # noqa: PLC0415 - only this listing reads the packs

        ids = [pack.id for pack in (manifest.load_pack(f, layout) for f in manifest.discover(layout))
               if args.packs in pack_stacks(pack)[:1]]
        print(" ".join(ids))
        return 0 if ids else 2
    try:
        if args.lock is None:
            problems = [s for stack in stacks for s in stale(layout, stack)]
            for stack in stacks:
                count = len(list(stack_dir(stack, layout).glob("lock-py*.txt")))
                print(f"{stack}: {count} lock(s)")
            for problem in problems:
                print(f"stale: {problem}", file=sys.stderr)
            return 1 if problems else 0
        for stack in args.lock or stacks:
            if stack not in stacks:
                raise StackError(f"no stack '{stack}' (stacks/ has: {', '.join(stacks) or 'none'})")
            for python in args.python or PYTHONS:
                path = generate(layout, stack, python, upgrade=args.upgrade)
                print(f"written: {path.relative_to(layout.root)}", file=sys.stderr)
    except (StackError, pkgindex.PackageIndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
