"""Applying a pack's patch: read it first, then `git apply --check`, then `git apply`; never fuzz.

A patch is parsed before git sees it: it must be UTF-8 text of `diff --git` sections whose hunks have
the line counts their headers say, touching only paths inside the tree (no absolute paths, no '..', nothing
under .git/), creating no symbolic links or submodules and carrying no binary data. Anything else is
INVALID, with the reason, at lint and at run time: it is not a conflict to rebase. When a valid patch does
not apply, `git apply --check --reverse` tells "already applied upstream" from a real conflict, and a
conflict names the failing files and hunks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..core.model import PatchStatus
from . import gitutil

METHOD = "git apply (checked with --check first; exact context, no fuzz; line offsets allowed)"
HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_MODE_RE = re.compile(r"^(new file mode|deleted file mode|old mode|new mode|index [0-9a-f]+\.\.[0-9a-f]+) ?(\d{6})?")
_PATH_LINES = ("--- ", "+++ ", "rename from ", "rename to ", "copy from ", "copy to ")


@dataclass
class PatchResult:
    status: PatchStatus
    method: str = METHOD
    failures: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (PatchStatus.APPLIED, PatchStatus.APPLIES)


_FAIL_RES = (
    re.compile(r"^error: patch failed: (?P<file>.+?):(?P<line>\d+)$"),
    re.compile(r"^error: (?P<file>.+?): patch does not apply$"),
    re.compile(r"^error: (?P<file>.+?): does not exist in index$"),
    re.compile(r"^error: (?P<file>.+?): No such file or directory$"),
    re.compile(r"^error: (?P<file>.+?): already exists in working directory$"),
)


def _text(patch: Path) -> str:
    return patch.read_bytes().decode("utf-8", errors="replace")


def patch_files(patch: Path) -> list[str]:
    """Paths a unified diff touches (b/ side, a/ side for deletions)."""
    files: list[str] = []
    for line in _text(patch).splitlines():
        if line.startswith("diff --git "):
            parts = line.split()
            if len(parts) >= 4:
                name = parts[3][2:] if parts[3].startswith("b/") else parts[3]
                if name not in files:
                    files.append(name)
    return files


def _bad_path(path: str) -> str | None:
    path = path.strip().strip('"')
    if path == "/dev/null":
        return None
    if path.startswith(("a/", "b/")):
        path = path[2:]
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or "\\" in path:
        return f"path '{path}' is not a relative path inside the tree"
    if ".." in parts:
        return f"path '{path}' leaves the tree"
    if parts[0] == ".git":
        return f"path '{path}' is inside .git/"
    if any(ord(c) < 32 for c in path):
        return f"path {path!r} holds control characters"
    return None


def problems(patch: Path) -> list[str]:
    """Why this file is not a patch that may be applied (empty: it is one)."""
    data = patch.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [f"{patch.name}: not UTF-8 text"]
    lines = text.splitlines()
    found: list[str] = []
    sections = [i for i, ln in enumerate(lines) if ln.startswith("diff --git ")]
    if not sections:
        return [f"{patch.name}: no 'diff --git' sections (not a patch in git's format)"]
    body: set[int] = set()  # lines inside hunks: a removed "-- x" line reads like a header, and is not one
    hunks = 0
    i = 0
    while i < len(lines):
        m = HUNK_RE.match(lines[i])
        if not m:
            i += 1
            continue
        hunks += 1
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
            elif tag != "\\":
                break
            body.add(j)
            j += 1
        if old != 0 or new != 0:
            found.append(f"{patch.name}: hunk '{lines[i][:80]}' (line {i + 1}) has the wrong number of lines")
        i = j
    for i, line in enumerate(lines):
        if i in body:
            continue
        if line.startswith("diff --git "):
            for part in line.split()[2:4]:
                if (why := _bad_path(part)):
                    found.append(f"{patch.name}: {why}")
        elif line.startswith(_PATH_LINES):
            path = line.split(" ", 1)[1].split("\t")[0] if line.startswith(("--- ", "+++ ")) else line.split(" ", 2)[2]
            if (why := _bad_path(path)):
                found.append(f"{patch.name}: {why}")
        elif (m := _MODE_RE.match(line)) and m.group(2) in ("120000", "160000"):
            kind = "symbolic link" if m.group(2) == "120000" else "submodule"
            found.append(f"{patch.name}: line {i + 1} creates a {kind} (refused)")
        elif line.startswith(("GIT binary patch", "Binary files ")):
            found.append(f"{patch.name}: line {i + 1}: binary patches are refused (a reviewer cannot read them)")
    if hunks == 0 and not any(ln.startswith(("rename from", "deleted file mode", "new file mode")) for ln in lines):
        found.append(f"{patch.name}: no hunks")
    return list(dict.fromkeys(found))


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
    for line in _text(patch).splitlines():
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
    invalid = problems(patch)
    if invalid:
        return PatchResult(PatchStatus.INVALID, failures=invalid)
    files = patch_files(patch)
    proc = gitutil.run(["apply", "--check", "--verbose", str(patch)], cwd=workdir)
    if proc.returncode == 0:
        return PatchResult(PatchStatus.APPLIES, files=files, output=proc.stderr)
    reverse = gitutil.run(["apply", "--check", "--reverse", str(patch)], cwd=workdir)
    if reverse.returncode == 0:
        return PatchResult(PatchStatus.ALREADY_APPLIED, files=files, output=proc.stderr)
    failures = _rejected_hunks(workdir, patch) or describe_failures(proc.stderr, patch)
    return PatchResult(PatchStatus.CONFLICT, failures=failures or [proc.stderr.strip()], files=files,
                       output=proc.stderr)


def _rejected_hunks(workdir: Path, patch: Path) -> list[str]:
    """Every hunk that fails, not just the first: `git apply --reject` tries them all. The tree is
    put back exactly as it was afterwards."""
    proc = gitutil.run(["apply", "--reject", "--verbose", str(patch)], cwd=workdir)
    gitutil.git(["reset", "-q", "--hard"], cwd=workdir)
    gitutil.git(["clean", "-q", "-f", "-d"], cwd=workdir)
    return describe_failures(proc.stderr, patch)


def apply(workdir: Path, patch: Path) -> PatchResult:
    """Check, then apply. The result says applied only when git changed exactly the patch's files, all of
    them inside the tree and none of them a link."""
    result = check(workdir, patch)
    if result.status != PatchStatus.APPLIES:
        return result
    proc = gitutil.run(["apply", str(patch.resolve())], cwd=workdir)
    if proc.returncode != 0:  # pragma: no cover - --check passed a moment ago
        return PatchResult(PatchStatus.CONFLICT, failures=[proc.stderr.strip()], files=result.files, output=proc.stderr)
    changed = gitutil.git(["status", "--porcelain", "--untracked-files=all"], cwd=workdir)
    changed_files = sorted({line[3:] for line in changed.splitlines() if line.strip()})
    links = [f for f in changed_files if (workdir / f).is_symlink()]
    if links:
        return PatchResult(PatchStatus.INVALID, failures=[f"the patch made {', '.join(links)} a symbolic link"],
                           files=changed_files)
    return PatchResult(PatchStatus.APPLIED, files=changed_files, output=result.output)
