"""Applying a pack's patch: `git apply --check` first, then `git apply`; never fuzz.

When a patch does not apply, `git apply --check --reverse` tells "already applied upstream"
from a real conflict, and a conflict names the failing files and hunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import gitutil

METHOD = "git apply (checked with --check first; exact context, no fuzz; line offsets allowed)"


@dataclass
class PatchResult:
    status: str  # applied | applies | conflict | already_applied | no_patch
    method: str = METHOD
    failures: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("applied", "applies")


_FAIL_RES = (
    re.compile(r"^error: patch failed: (?P<file>.+?):(?P<line>\d+)$"),
    re.compile(r"^error: (?P<file>.+?): patch does not apply$"),
    re.compile(r"^error: (?P<file>.+?): does not exist in index$"),
    re.compile(r"^error: (?P<file>.+?): No such file or directory$"),
    re.compile(r"^error: (?P<file>.+?): already exists in working directory$"),
)


def patch_files(patch: Path) -> list[str]:
    """Paths a unified diff touches (b/ side, a/ side for deletions)."""
    files: list[str] = []
    for line in patch.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("diff --git "):
            parts = line.split()
            if len(parts) >= 4:
                name = parts[3][2:] if parts[3].startswith("b/") else parts[3]
                if name not in files:
                    files.append(name)
    return files


def describe_failures(stderr: str, patch: Path) -> list[str]:
    """git's complaints turned into 'file: hunk at line N (@@ header @@)' entries."""
    hunks = _hunk_headers(patch)
    out: list[str] = []
    for raw in stderr.splitlines():
        line = raw.strip()
        match = next((m for rx in _FAIL_RES if (m := rx.match(line))), None)
        if not match:
            continue
        file, line_no = match.group("file"), match.groupdict().get("line")
        if line_no:
            header = next((h for start, h in hunks.get(file, []) if start == int(line_no)), None)
            entry = f"{file}: hunk at line {line_no}" + (f" ({header})" if header else "")
        elif any(o.startswith(f"{file}: hunk") for o in out):
            continue  # "patch does not apply" after the hunk that failed says nothing new
        else:
            entry = f"{file}: {line.removeprefix('error: ').removeprefix(file + ': ')}"
        if entry not in out:
            out.append(entry)
    return out


def _hunk_headers(patch: Path) -> dict[str, list[tuple[int, str]]]:
    current = None
    hunks: dict[str, list[tuple[int, str]]] = {}
    for line in patch.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("--- ") and line[4:].strip() != "/dev/null":
            current = line[4:].strip().removeprefix("a/")
        elif line.startswith("+++ ") and line[4:].strip() != "/dev/null":
            current = line[4:].strip().removeprefix("b/")
        elif line.startswith("@@") and current:
            m = re.match(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@", line)
            if m:
                hunks.setdefault(current, []).append((int(m.group(1)), line.strip()))
    return hunks


def check(workdir: Path, patch: Path) -> PatchResult:
    """Would the patch apply to workdir? Does not modify it."""
    patch = patch.resolve()
    files = patch_files(patch)
    proc = gitutil.run(["apply", "--check", "--verbose", str(patch)], cwd=workdir)
    if proc.returncode == 0:
        return PatchResult("applies", files=files, output=proc.stderr)
    reverse = gitutil.run(["apply", "--check", "--reverse", str(patch)], cwd=workdir)
    if reverse.returncode == 0:
        return PatchResult("already_applied", files=files, output=proc.stderr)
    failures = _rejected_hunks(workdir, patch) or describe_failures(proc.stderr, patch)
    return PatchResult("conflict", failures=failures or [proc.stderr.strip()], files=files, output=proc.stderr)


def _rejected_hunks(workdir: Path, patch: Path) -> list[str]:
    """Every hunk that fails, not just the first: `git apply --reject` tries them all. The tree is
    put back exactly as it was afterwards."""
    proc = gitutil.run(["apply", "--reject", "--verbose", str(patch)], cwd=workdir)
    gitutil.git(["reset", "-q", "--hard"], cwd=workdir)
    gitutil.git(["clean", "-q", "-f", "-d"], cwd=workdir)
    return describe_failures(proc.stderr, patch)


def apply(workdir: Path, patch: Path) -> PatchResult:
    """Check, then apply. The result says applied only when git changed exactly the patch's files."""
    result = check(workdir, patch)
    if result.status != "applies":
        return result
    proc = gitutil.run(["apply", str(patch.resolve())], cwd=workdir)
    if proc.returncode != 0:  # pragma: no cover - --check passed a moment ago
        return PatchResult("conflict", failures=[proc.stderr.strip()], files=result.files, output=proc.stderr)
    changed = gitutil.git(["status", "--porcelain", "--untracked-files=all"], cwd=workdir)
    changed_files = sorted({line[3:] for line in changed.splitlines() if line.strip()})
    return PatchResult("applied", files=changed_files, output=result.output)
