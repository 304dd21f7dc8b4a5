"""Shared fixtures: a real upstream git repo in a temp dir that git reaches through its own
url.insteadOf (as air-gapped sites do), and a throwaway collection with packs that need no GPU."""

from __future__ import annotations

import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.core import manifest
from harness.core.layout import Layout
from harness.run.pipeline import RunOptions, run_pack
from harness.sources import pkgindex

UPSTREAM_URL = "https://github.com/acme/widget"


def sh(*args: str, cwd: Path) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def git_commit(repo: Path, message: str) -> str:
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message, cwd=repo)
    return sh("git", "rev-parse", "HEAD", cwd=repo)


@dataclass
class Upstream:
    path: Path
    base: str  # commit with the bug (VALUE = 1)
    fixed: str  # later commit where upstream fixed it differently (VALUE = 2, other context)


@pytest.fixture
def upstream(tmp_path, monkeypatch) -> Upstream:
    repo = tmp_path / "upstream-widget"
    (repo / "src" / "widget").mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("git", "config", "uploadpack.allowFilter", "true", cwd=repo)
    sh("git", "config", "uploadpack.allowAnySHA1InWant", "true", cwd=repo)
    (repo / "src" / "widget" / "__init__.py").write_text("VALUE = 1  # the bug\nOTHER = 'a'\n")
    (repo / "docs.txt").write_text("docs\n")
    base = git_commit(repo, "base with the bug")
    sh("git", "tag", "v1.0", cwd=repo)
    (repo / "src" / "widget" / "__init__.py").write_text("VALUE = 2  # fixed upstream\nOTHER = 'b'\n")
    fixed = git_commit(repo, "upstream fix")
    sh("git", "tag", "v1.1", cwd=repo)
    # git itself redirects the real-looking URL to the temp repo, like a mirror would
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", f"url.file://{repo}.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", UPSTREAM_URL)
    return Upstream(repo, base, fixed)


PATCH_FIX = """\
diff --git a/src/widget/__init__.py b/src/widget/__init__.py
--- a/src/widget/__init__.py
+++ b/src/widget/__init__.py
@@ -1,2 +1,2 @@
-VALUE = 1  # the bug
+VALUE = 2  # our fix
 OTHER = 'a'
"""

REPRO_OK = """\
import json, sys
import widget
print("some chatter from the library")
print("EVIDENCE " + json.dumps({"value": widget.VALUE, "threshold": 2}))
print("FIX_VALIDATED" if widget.VALUE >= 2 else "INCONCLUSIVE" if widget.VALUE < 0 else "BUG_REPRODUCED")
"""

README = "# Toy pack\n\n## Scope\nA toy.\n"


BUG_CLAIM = """\
bug = "VALUE is 1 where it must be at least 2."
fix = "Set VALUE to 2 in the package init."
"""


def manifest_text(pack_id: str, slug: str, commit: str, **over: str) -> str:
    fields = {
        "gpu": "false", "timeout": "60", "extra_requires": "", "extra_top": "", "sdist": "",
        "source": "", "expect": "", "kind": "bugfix", "title": "A toy pack for the harness tests",
        "claim": BUG_CLAIM, "thread": "https://github.com/acme/widget/issues/1", "status": "open upstream",
    }
    fields.update(over)
    claim = fields["claim"].strip().replace("\n", "\n        ")
    return textwrap.dedent(f"""\
        id = "{pack_id}"
        slug = "{slug}"
        title = "{fields['title']}"
        kind = "{fields['kind']}"
        {fields['extra_top']}
        [target]
        repo = "acme/widget"
        package = "widget"

        [base]
        ref = "v1.0"
        commit = "{commit}"
        {fields['sdist']}
        {fields['source']}
        [import]
        paths = ["src"]

        [requires]
        gpu = {fields['gpu']}
        {fields['extra_requires']}

        [claim]
        {claim}
        scope = "The value of one constant, read back after import."
        not_claimed = "Anything else."

        [upstream]
        thread = "{fields['thread']}"
        status = "{fields['status']}"

        [run]
        timeout_s = {fields['timeout']}
        {fields['expect']}
        """)


@dataclass
class Collection:
    layout: Layout

    def add_pack(self, pack_id: str, slug: str, commit: str, repro: str = REPRO_OK,
                 patch: str | None = PATCH_FIX, **over: str) -> Path:
        folder = self.layout.packs / f"{pack_id}-{slug}"
        folder.mkdir(parents=True)
        (folder / "pack.toml").write_text(manifest_text(pack_id, slug, commit, **over))
        (folder / "repro.py").write_text(repro)
        (folder / "README.md").write_text(README)
        if patch is not None:
            self.layout.patches.mkdir(exist_ok=True)
            (self.layout.patches / f"{pack_id}-{slug}.patch").write_text(patch)
        return folder


@pytest.fixture
def collection(tmp_path) -> Collection:
    root = tmp_path / "collection"
    (root / "packs").mkdir(parents=True)
    (root / "patches").mkdir()
    return Collection(Layout(root))


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def opts(collection, cache, tmp_path):
    """RunOptions for the toy collection; keyword arguments override fields."""
    def make(**kw) -> RunOptions:
        return RunOptions(cache_dir=cache, run_dir=tmp_path / "runs", layout=collection.layout, **kw)

    return make


def run(collection, opts, folder, **kw):
    """run_pack on one toy pack folder, silently."""
    return run_pack(manifest.load_pack(folder, collection.layout), opts(**kw), lambda m: None)


@pytest.fixture(autouse=True)
def _fresh_index_config():
    pkgindex.index_config.cache_clear()
    yield
    pkgindex.index_config.cache_clear()
