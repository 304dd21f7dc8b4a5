from harness.checks import lint
from harness.core.layout import Layout

from .conftest import PATCH_FIX


def test_the_collection_lints_clean():
    assert lint.lint(Layout()) == []


def test_toy_collection_lints_clean(collection, upstream):
    collection.add_pack("01", "toy", upstream.base)
    assert lint.lint(collection.layout) == []


def test_broken_patch_and_missing_scope_are_reported(collection, upstream):
    folder = collection.add_pack("01", "toy", upstream.base, patch=PATCH_FIX.replace("@@ -1,2 +1,2 @@",
                                                                                      "@@ -1,3 +1,2 @@"))
    (folder / "README.md").write_text("# Toy\n")
    problems = lint.lint(collection.layout)
    assert any("wrong number of lines" in p for p in problems)
    assert any("no 'Scope' section" in p for p in problems)


def test_orphan_patch_duplicate_id_and_harness_import(collection, upstream):
    collection.add_pack("01", "toy", upstream.base, repro="from harness import x\n")
    collection.add_pack("01", "other", upstream.base, patch=None)
    (collection.layout.patches / "05-gone.patch").write_text(PATCH_FIX)
    problems = lint.lint(collection.layout)
    assert any("used by both" in p for p in problems)
    assert any("05-gone.patch: no pack folder" in p for p in problems)
    assert any("imports the harness" in p for p in problems)
    assert any("01-other: patches/01-other.patch is missing" in p for p in problems)


def test_patch_outside_source_paths(collection, upstream):
    collection.add_pack("01", "toy", upstream.base, source='[source]\npaths = ["docs.txt", "src/other"]')
    problems = lint.lint(collection.layout)
    assert any("is not inside any of source.paths" in p for p in problems)
