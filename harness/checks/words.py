"""Words the product's own files must not use: the collection describes itself and its users' machines ("a
GPU node without network whose transfers are limited to 64 MiB"), never the place it was written in or the
tools used to write it. Receipts and run reports (evidence/*.json, *.xml) are data and are not read."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ..core.layout import Layout

WORDS = re.compile(r"this workplace|device machine|device call|workplace|(?<=\s)sessions?(?=[\s.,;:)])",
                   re.IGNORECASE)
# data, and the rule itself
SKIP = re.compile(r"^evidence/.*\.(json|xml)$|^harness/checks/words\.py$|^tests/test_words\.py$")


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
            match = WORDS.search(line)
            if match:
                found.append(f"{path.relative_to(layout.root)}:{number}: '{match.group(0)}': describe the product and "
                             "its users' machines instead")
    return found
