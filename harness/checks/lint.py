"""--lint: the collection's structure, checked without fetching anything."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ..core import manifest
from ..core.layout import Layout
from ..core.manifest import ManifestError, Pack
from ..envs import locks
from ..sources import patching
from ..sources.patching import patch_files
from . import words

SENTINEL_TOKENS = {True: ("EVIDENCE", "CONTRACT_HELD", "CONTRACT_BROKEN", "INCONCLUSIVE"),
                   False: ("EVIDENCE", "BUG_REPRODUCED", "FIX_VALIDATED", "INCONCLUSIVE")}


def printed_words(source: str) -> set[str]:
    """Sentinel words the reproducer's code holds as string values (not comments, not docstrings): what it
    can print. A syntax error is reported by the caller."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                  and isinstance(node.value, ast.Constant)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found |= {w for w in (*SENTINEL_TOKENS[True], *SENTINEL_TOKENS[False]) if w in node.value}
    return found


def lint_pack(pack_dir: Path, layout: Layout) -> tuple[Pack | None, list[str]]:
    problems: list[str] = []
    for name in ("pack.toml", "repro.py", "README.md"):
        if not (pack_dir / name).is_file():
            problems.append(f"{pack_dir.name}: {name} is missing")
    try:
        pack = manifest.load_pack(pack_dir, layout)
    except ManifestError as exc:
        return None, [*problems, str(exc)]
    if pack.has_patch:
        if not pack.patch_path.is_file():
            problems.append(f"{pack.name}: patches/{pack.name}.patch is missing")
        else:
            problems += [f"{pack.name}: {p}" for p in patching.problems(pack.patch_path)]
            if pack.source_paths:
                for f in patch_files(pack.patch_path):
                    if not any(manifest.inside(f, s) for s in pack.source_paths):
                        problems.append(f"{pack.name}: the patch touches '{f}', outside source.paths")
    elif pack.patch_path.is_file():
        problems.append(f"{pack.name}: a {pack.kind} (contract) pack has no patch, yet patches/{pack.name}.patch "
                        "exists; remove it or make the pack a bug pack")
    if pack.readme_path.is_file():
        readme = pack.readme_path.read_text(encoding="utf-8")
        if not re.search(r"^#+\s*Scope\b", readme, re.MULTILINE | re.IGNORECASE):
            problems.append(f"{pack.name}: README.md has no 'Scope' section")
    if pack.repro_path.is_file():
        repro = pack.repro_path.read_bytes().decode("utf-8", "replace")
        if re.search(r"^\s*(from|import)\s+harness\b", repro, re.MULTILINE):
            problems.append(f"{pack.name}: repro.py imports the harness; reproducers must stand alone")
        try:
            words = printed_words(repro)
        except (SyntaxError, ValueError, RecursionError) as exc:
            problems.append(f"{pack.name}: repro.py does not parse as Python: {exc}")
        else:
            for token in SENTINEL_TOKENS[pack.is_contract]:
                if token not in words:
                    problems.append(f"{pack.name}: repro.py never prints {token} (no string in its code holds it)")
    try:
        problems += locks.pack_problems(pack, layout)
    except locks.StackError as exc:
        problems.append(f"{pack.name}: {exc}")
    if not pack.stack and not pack.retired and locks.stacks_dir(layout).is_dir():  # a collection with stacks
        problems.append(f"{pack.name}: no [requires].stack: name the stack whose locked environment it runs in "
                        f"(stacks/: {', '.join(locks.available(layout)) or 'none'})")
    return pack, problems


def lint(layout: Layout | None = None) -> list[str]:
    layout = layout or Layout()
    problems: list[str] = []
    seen: dict[int, str] = {}
    folders = manifest.discover(layout)
    for stray in sorted(p.name for p in layout.packs.iterdir()) if layout.packs.is_dir() else []:
        if not manifest.PACK_DIR_RE.match(stray) and not stray.startswith("."):
            problems.append(f"packs/{stray}: not an NN-slug pack folder")
    for folder in folders:
        pack, found = lint_pack(folder, layout)
        problems += found
        pid = int(manifest.PACK_DIR_RE.match(folder.name).group(1))
        if pid in seen:
            problems.append(f"pack id {pid} is used by both {seen[pid]} and {folder.name}")
        seen[pid] = folder.name
    problems += words.problems(layout)
    names = {f.name for f in folders}
    if layout.patches.is_dir():
        for patch in sorted(layout.patches.glob("*.patch")):
            if patch.stem not in names:
                problems.append(f"patches/{patch.name}: no pack folder packs/{patch.stem}")
    return problems
