"""--lint: the collection's structure, checked without fetching anything."""

from __future__ import annotations

import re
from pathlib import Path

from ..core import manifest
from ..core.layout import Layout
from ..core.manifest import ManifestError, Pack
from ..envs import locks as stacks
from ..sources.patching import patch_files

HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def check_unified_diff(patch: Path) -> list[str]:
    """Problems with a patch file as a unified diff: hunks whose line counts disagree with their
    headers, no file sections, paths that leave the repository."""
    problems: list[str] = []
    lines = patch.read_text(encoding="utf-8", errors="replace").splitlines()
    files = patch_files(patch)
    if not files:
        problems.append(f"{patch.name}: no 'diff --git' sections")
    for f in files:
        if f.startswith("/") or ".." in Path(f).parts:
            problems.append(f"{patch.name}: path '{f}' is not inside the target repository")
    i = 0
    while i < len(lines):
        m = HUNK_RE.match(lines[i])
        if not m:
            i += 1
            continue
        old = int(m.group(2)) if m.group(2) is not None else 1
        new = int(m.group(4)) if m.group(4) is not None else 1
        j = i + 1
        while j < len(lines) and (old > 0 or new > 0):
            tag = lines[j][:1]
            if tag == " " or lines[j] == "":
                old, new = old - 1, new - 1
            elif tag == "-":
                old -= 1
            elif tag == "+":
                new -= 1
            elif tag == "\\":
                pass
            else:
                break
            j += 1
        if old != 0 or new != 0:
            problems.append(f"{patch.name}: hunk '{lines[i]}' (line {i + 1}) has the wrong number of lines")
        i = j
    return problems


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
            problems += check_unified_diff(pack.patch_path)
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
        repro = pack.repro_path.read_text(encoding="utf-8")
        if re.search(r"^\s*(from|import)\s+harness\b", repro, re.MULTILINE):
            problems.append(f"{pack.name}: repro.py imports the harness; reproducers must stand alone")
        tokens = (("EVIDENCE", "CONTRACT_HELD", "CONTRACT_BROKEN", "INCONCLUSIVE") if pack.is_contract
                  else ("EVIDENCE", "BUG_REPRODUCED", "FIX_VALIDATED", "INCONCLUSIVE"))
        for token in tokens:
            if token not in repro:
                problems.append(f"{pack.name}: repro.py never prints {token}")
    problems += stacks.pack_problems(pack, layout)
    return pack, problems


def lint(layout: Layout | None = None) -> list[str]:
    layout = layout or Layout()
    problems: list[str] = []
    seen: dict[str, str] = {}
    folders = manifest.discover(layout)
    for stray in sorted(p.name for p in layout.packs.iterdir()) if layout.packs.is_dir() else []:
        if not manifest.PACK_DIR_RE.match(stray) and not stray.startswith("."):
            problems.append(f"packs/{stray}: not an NN-slug pack folder")
    for folder in folders:
        pack, found = lint_pack(folder, layout)
        problems += found
        pid = manifest.PACK_DIR_RE.match(folder.name).group(1)
        if pid in seen:
            problems.append(f"pack id {pid} is used by both {seen[pid]} and {folder.name}")
        seen[pid] = folder.name
    names = {f.name for f in folders}
    if layout.patches.is_dir():
        for patch in sorted(layout.patches.glob("*.patch")):
            if patch.stem not in names:
                problems.append(f"patches/{patch.name}: no pack folder packs/{patch.stem}")
    return problems
