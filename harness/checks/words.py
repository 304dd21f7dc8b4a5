"""The words product files must not use: the collection describes itself and its users' machines ("a GPU
node without network whose transfers are limited to 64 MiB"), never the place it was written in or the
tools used to write it. The phrases are kept as digests (the first 16 hex digits of the sha256 of each,
lower-case), so that this rule does not itself use them: phrases of one or two words that a word of the
line (or two, across spaces, hyphens or underscores, not across code such as `len(a) % b`) begins with,
and words that count only between spaces or punctuation (not as a code identifier such as a parameter
name). Receipts and run reports
(evidence/*.json, *.xml) are data and are not read."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from ..core.layout import Layout

# the start of a word or of two words (so "...s", "...ing" are found too), by the length of the phrase
ANYWHERE = {
    9: frozenset({'83366499299704fb'}),
    11: frozenset({'c700a5c376cbd6fa'}),
    14: frozenset({'098ef366a6a9e254'}),
}
BETWEEN_SPACES = frozenset({'3f3af1ecebbd1410', '1225ae6c1ae69dcb'})
_WORD = re.compile(r"[a-z]+")
_JOIN = re.compile(r"[\s_-]+")  # what joins the two words of a phrase (prose, hyphenated, snake_case)
_SPACED = re.compile(r"(?<=\s)[a-z]+(?=[\s.,;:)])")
SKIP = re.compile(r"^evidence/.*\.(json|xml)$")  # data


def digest(phrase: str) -> str:
    return hashlib.sha256(phrase.encode()).hexdigest()[:16]


def refused(line: str) -> str | None:
    """The first phrase of the line that the rule refuses, or None."""
    text = line.lower()
    found = list(_WORD.finditer(text))
    words = [m.group() for m in found]
    pairs = [f"{a.group()} {b.group()}" for a, b in zip(found, found[1:], strict=False)
             if _JOIN.fullmatch(text[a.end():b.start()])]
    for phrase in [*words, *pairs]:
        for length, digests in ANYWHERE.items():
            if len(phrase) >= length and digest(phrase[:length]) in digests:
                return phrase
    return next((w for w in _SPACED.findall(text) if digest(w) in BETWEEN_SPACES), None)


def product_files(layout: Layout) -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=layout.root, capture_output=True, check=True).stdout
        names = [n for n in out.decode("utf-8", "replace").split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # a copy without .git: every file but runs/ and caches
        names = [str(p.relative_to(layout.root)) for p in layout.root.rglob("*") if p.is_file()
                 and not any(part in (".git", "runs", ".venv", "__pycache__") for part in p.parts)]
    return [layout.root / n for n in names if not SKIP.match(n)]


def problems(layout: Layout) -> list[str]:
    found = []
    for path in product_files(layout):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            phrase = refused(line)
            if phrase:
                found.append(f"{path.relative_to(layout.root)}:{number}: '{phrase}': describe the product and its "
                             "users' machines instead")
    return found
