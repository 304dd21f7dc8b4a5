from pathlib import Path

import pytest

from harness.sources import patching
from harness.sources import upstream as sources

from .conftest import PATCH_FIX, sh


@pytest.fixture
def work(upstream, cache, tmp_path):
    def make(commit: str) -> Path:
        src = sources.acquire_git("acme/widget", "x", commit, "pinned", (), cache, lambda m: None)
        return sources.work_copy(src, tmp_path / f"work-{commit[:8]}")

    return make


def write_patch(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fix.patch"
    path.write_text(text)
    return path


def test_patch_applies(work, upstream, tmp_path):
    tree = work(upstream.base)
    result = patching.apply(tree, write_patch(tmp_path, PATCH_FIX))
    assert result.status == "applied" and result.files == ["src/widget/__init__.py"]
    assert "VALUE = 2  # our fix" in (tree / "src/widget/__init__.py").read_text()


def test_check_does_not_modify(work, upstream, tmp_path):
    tree = work(upstream.base)
    assert patching.check(tree, write_patch(tmp_path, PATCH_FIX)).status == "applies"
    assert sh("git", "status", "--porcelain", cwd=tree) == ""


def test_conflict_names_file_and_hunk_and_leaves_tree_clean(work, upstream, tmp_path):
    tree = work(upstream.fixed)  # upstream changed the very lines the patch touches
    result = patching.apply(tree, write_patch(tmp_path, PATCH_FIX))
    assert result.status == "conflict"
    assert result.failures == ["src/widget/__init__.py: hunk at line 1 (@@ -1,2 +1,2 @@)"]
    assert sh("git", "status", "--porcelain", "--untracked-files=all", cwd=tree) == ""


def test_already_applied_is_told_apart(work, upstream, tmp_path):
    tree = work(upstream.base)
    patch = write_patch(tmp_path, PATCH_FIX)
    assert patching.apply(tree, patch).status == "applied"
    assert patching.check(tree, patch).status == "already_applied"


def test_no_fuzz_whitespace_context_must_match(work, upstream, tmp_path):
    tree = work(upstream.base)
    fuzzy = PATCH_FIX.replace(" OTHER = 'a'", " OTHER = 'a'  ")
    result = patching.check(tree, write_patch(tmp_path, fuzzy))
    assert result.status == "conflict"
