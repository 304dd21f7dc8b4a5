"""pack.toml: load, validate against the schema, and expose one typed Pack per folder."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from .layout import Layout

DEFAULT_TIMEOUT_S = 900
CONTRACT_KINDS = ("parity", "perf")  # no patch: HELD / BROKEN at a ref (PACKS.md, contract packs)
PACK_DIR_RE = re.compile(r"^([0-9]{2}|[1-9][0-9]{2})-([a-z0-9]+(?:-[a-z0-9]+)*)$")  # 05, 22, 105: one spelling each
SELECTOR_RE = re.compile(r"^[0-9]{1,3}$|^[0-9]{2,3}-[a-z0-9]+(?:-[a-z0-9]+)*$")


class ManifestError(Exception):
    """A pack.toml that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Companion:
    """Another upstream release the reproducer imports next to the target (never patched): a pinned sdist."""
    repo: str
    ref: str
    sdist: str
    sha256: str
    import_paths: tuple[str, ...] = (".",)
    skip_init: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompilerFix:
    """A compiler pack's two releases: the stages import base_wheels, then fixed_wheels (no patch)."""
    package: str
    fixed_release: str
    fix_commit: str
    base_wheels: tuple[str, ...]
    fixed_wheels: tuple[str, ...]
    fixed_stack: str | None = None  # the stack (environment) of the fixed-release stage; the base's is [requires].stack


@dataclass(frozen=True)
class Pack:
    id: str
    slug: str
    title: str
    kind: str
    dir: Path
    patch_path: Path
    repo: str
    package: str
    base_ref: str
    base_commit: str
    sdist: str | None
    sdist_sha256: str | None
    source_paths: tuple[str, ...]
    import_paths: tuple[str, ...]
    skip_init: tuple[str, ...]
    gpu: bool
    min_capability: str | None
    gpus: int
    python_deps: tuple[str, ...]
    wheels: tuple[str, ...]
    bundle_prune: tuple[str, ...]
    claim: dict[str, str]
    upstream: dict[str, Any]
    timeout_s: int
    exclusive: bool  # [run] exclusive: under --jobs, runs alone (its verdict depends on timings)
    extra_sentinels: tuple[str, ...]
    expect: dict[str, str] = field(default_factory=dict)
    retired: str | None = None
    headline: tuple[str, ...] = ()
    stack: str | None = None  # docker/<stack>/: the container --docker runs the pack in
    companions: tuple[Companion, ...] = ()
    compiler: CompilerFix | None = None  # [compiler]: the fix is a compiler release, not a patch
    tests: tuple[str, ...] = ()  # [tests].paths: upstream's own tests of the patched code (pytest arguments)
    tests_timeout_s: int = 1800
    tests_select: str | None = None  # a pytest -k expression
    tests_pin_autotune: bool = False

    @property
    def name(self) -> str:
        return f"{self.id}-{self.slug}"

    @property
    def manifest_path(self) -> Path:
        return self.dir / "pack.toml"

    @property
    def repro_path(self) -> Path:
        return self.dir / "repro.py"

    @property
    def readme_path(self) -> Path:
        return self.dir / "README.md"

    @property
    def module_paths(self) -> tuple[Path, ...]:
        """The pack's own Python modules next to repro.py (imported by it from its folder): hashed with it."""
        return tuple(sorted(p for p in self.dir.glob("*.py") if p.name != "repro.py"))

    @property
    def git_url(self) -> str:
        return f"https://github.com/{self.repo}"

    @property
    def is_contract(self) -> bool:
        """A contract pack (kind parity/perf): no patch; one stage checks a seam's contract at a ref."""
        return self.kind in CONTRACT_KINDS

    @property
    def is_compiler(self) -> bool:
        """A compiler pack: the clean and fixed stages import different compiler releases; no patch."""
        return self.compiler is not None

    @property
    def has_patch(self) -> bool:
        return not self.is_contract and not self.is_compiler


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("harness.core").joinpath("schemas/pack.schema.json").read_text()
    return json.loads(text)


def _field_name(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        if missing:
            return f"{path}.{missing[0]}" if path else missing[0]
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' was unexpected", error.message)
        if extra:
            return f"{path}.{extra[0]}" if path else extra[0]
    return path or "(top level)"


def validate_manifest(data: dict[str, Any], source: Path) -> None:
    """Raise ManifestError naming the file and the first offending field."""
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        message = first.message
        if first.validator == "not" and first.validator_value == {}:  # a field this kind of pack must not have
            message = f"not allowed here: {first.schema.get('description', 'this field does not belong here')}"
        raise ManifestError(f"{source}: field '{_field_name(first)}': {message}{more}")


def load_pack(pack_dir: Path, layout: Layout | None = None) -> Pack:
    layout = layout or Layout()
    manifest = pack_dir / "pack.toml"
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: missing; every pack folder needs a pack.toml")
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{manifest}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{manifest}: not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ManifestError(f"{manifest}: nested too deeply to be a pack manifest") from exc
    except OSError as exc:
        raise ManifestError(f"{manifest}: cannot be read ({exc.strerror})") from exc
    try:
        validate_manifest(data, manifest)
    except RecursionError as exc:
        raise ManifestError(f"{manifest}: nested too deeply to be a pack manifest") from exc

    match = PACK_DIR_RE.match(pack_dir.name)
    if not match:
        raise ManifestError(f"{manifest}: folder name '{pack_dir.name}' must be NN-slug")
    if (data["id"], data["slug"]) != match.groups():
        raise ManifestError(
            f"{manifest}: field 'id'/'slug' ({data['id']}-{data['slug']}) must match the folder name "
            f"'{pack_dir.name}'"
        )
    import_paths = tuple(data["import"]["paths"])
    source_paths = tuple(data.get("source", {}).get("paths", ()))
    for path in (*import_paths, *source_paths):
        if ".." in Path(path).parts:
            raise ManifestError(f"{manifest}: field 'import.paths'/'source.paths': '{path}' leaves the checkout")
    if source_paths:
        for path in import_paths:
            if Path(path).parts and not any(inside(path, s) for s in source_paths):
                raise ManifestError(
                    f"{manifest}: field 'import.paths': '{path}' is not inside any of source.paths {source_paths}"
                )
    base = data["base"]
    req = data["requires"]
    return Pack(
        id=data["id"],
        slug=data["slug"],
        title=data["title"],
        kind=data["kind"],
        dir=pack_dir,
        patch_path=layout.patches / f"{pack_dir.name}.patch",
        repo=data["target"]["repo"],
        package=data["target"]["package"],
        base_ref=base["ref"],
        base_commit=base["commit"],
        sdist=base.get("sdist"),
        sdist_sha256=base.get("sdist_sha256"),
        source_paths=source_paths,
        import_paths=import_paths,
        skip_init=tuple(data["import"].get("skip_init", ())),
        gpu=req["gpu"],
        min_capability=req.get("min_capability"),
        gpus=req.get("gpus", 1 if req["gpu"] else 0),
        python_deps=tuple(req.get("python_deps", ())),
        wheels=tuple(req.get("wheels", ())),
        bundle_prune=tuple(req.get("bundle_prune", ())),
        claim=dict(data["claim"]),
        upstream=dict(data["upstream"]),
        timeout_s=data["run"].get("timeout_s", DEFAULT_TIMEOUT_S),
        exclusive=bool(data["run"].get("exclusive", False)),
        extra_sentinels=tuple(data["run"].get("extra_sentinels", ())),
        expect=dict(data.get("expect", {})),
        retired=data.get("retired"),
        headline=tuple(data.get("report", {}).get("headline", ())),
        stack=req.get("stack"),
        companions=tuple(Companion(c["repo"], c["ref"], c["sdist"], c["sha256"],
                                   tuple(c.get("import_paths", (".",))), tuple(c.get("skip_init", ())))
                         for c in req.get("companions", ())),
        compiler=_compiler(data.get("compiler")),
        tests=tuple(data.get("tests", {}).get("paths", ())),
        tests_timeout_s=data.get("tests", {}).get("timeout_s", 1800),
        tests_select=data.get("tests", {}).get("select"),
        tests_pin_autotune=bool(data.get("tests", {}).get("pin_autotune", False)),
    )


def _compiler(table: dict[str, Any] | None) -> CompilerFix | None:
    if table is None:
        return None
    return CompilerFix(table["package"], table["fixed_release"], table["fix_commit"], tuple(table["base_wheels"]),
                       tuple(table["fixed_wheels"]), table.get("fixed_stack"))


def inside(path: str, parent: str) -> bool:
    """Is relative path `path` equal to or under `parent`?"""
    p, q = Path(path).parts, Path(parent).parts
    return p[: len(q)] == q


def discover(layout: Layout | None = None) -> list[Path]:
    """Every pack folder (NN-slug) under packs/, sorted by id."""
    layout = layout or Layout()
    if not layout.packs.is_dir():
        return []
    return sorted(p for p in layout.packs.iterdir() if p.is_dir() and PACK_DIR_RE.match(p.name))


def select(selectors: list[str], layout: Layout | None = None) -> list[Path]:
    """Resolve '09', '9' or '09-liger-...' to pack folders; anything else is refused before it
    touches the file system (no '../' tricks)."""
    layout = layout or Layout()
    folders = discover(layout)
    chosen: list[Path] = []
    for raw in selectors:
        if not SELECTOR_RE.match(raw):
            raise ManifestError(f"pack selector '{raw}' is not a pack id (NN) or folder name (NN-slug)")
        if "-" in raw:
            hits = [p for p in folders if p.name == raw]
        else:
            hits = [p for p in folders if int(PACK_DIR_RE.match(p.name).group(1)) == int(raw)]
        if not hits:
            known = ", ".join(p.name for p in folders) or "none"
            raise ManifestError(f"no pack '{raw}' under {layout.packs} (known: {known})")
        if len(hits) > 1:
            raise ManifestError(f"pack id '{raw}' is ambiguous: {', '.join(p.name for p in hits)}")
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return chosen
