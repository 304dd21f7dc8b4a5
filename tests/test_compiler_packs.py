"""Compiler packs: the stages import two compiler releases (unpacked wheels), nothing is patched."""

import pytest

from harness import bundle, manifest, markdown, pipeline, reports, wheelsite

from .conftest import run, sh

REPRO = """\
import json
import widgetc
print("EVIDENCE " + json.dumps({"compiler": widgetc.VERSION, "divides_by_zero": widgetc.BUGGY}))
print("BUG_REPRODUCED" if widgetc.BUGGY else "FIX_VALIDATED")
"""

COMPILER = """
[compiler]
package = "widgetc"
fixed_release = "v2.0"
fix_commit = "b8dc37e66f6e"
base_wheels = ["widgetc==1.0"]
fixed_wheels = ["widgetc==2.0"]
"""


@pytest.fixture
def sites(tmp_path, monkeypatch):
    """wheelsite.site without an index: one unpacked tree per release; records what was asked for."""
    asked = []

    def fake_site(pins, prune, cache, python, progress):
        asked.append(pins)
        version = pins[0].split("==")[1]
        tree = tmp_path / "sites" / version / "widgetc"
        tree.mkdir(parents=True, exist_ok=True)
        (tree / "__init__.py").write_text(f"VERSION = {version!r}\nBUGGY = {version == '1.0'}\n")
        return tree.parent

    monkeypatch.setattr(wheelsite, "site", fake_site)
    return asked


def add(collection, upstream, **over):
    return collection.add_pack("13", "toyc", upstream.base, repro=REPRO, patch=None, extra_top="", **over)


def compiler_pack(collection, upstream, extra=""):
    folder = add(collection, upstream, expect=extra)
    (folder / "pack.toml").write_text((folder / "pack.toml").read_text() + COMPILER)
    return folder


def test_base_release_then_fixed_release_is_confirmed(collection, upstream, opts, sites):
    folder = compiler_pack(collection, upstream)
    result = run(collection, opts, folder)
    assert result.verdict == "CONFIRMED", result.reason
    assert [s.name for s in result.stages] == ["clean", "fixed-release"]
    assert [s.evidence["compiler"] for s in result.stages] == ["1.0", "2.0"]
    assert sites == [("widgetc==1.0",), ("widgetc==2.0",)]
    assert "released v2.0" in result.reason and "not by applying a patch" in result.reason
    assert result.patch["status"] == "no_patch" and result.patch["fixed_release"] == "v2.0"
    assert manifest.load_pack(folder, collection.layout).has_patch is False


def test_check_only_and_upstream_refs(collection, upstream, opts, sites):
    folder = compiler_pack(collection, upstream)
    checked = run(collection, opts, folder, check_only=True)
    assert checked.verdict == "CHECKED" and "no patch" in checked.reason and sites == []
    at_main = run(collection, opts, folder, upstream_ref="main")
    assert at_main.verdict == "SKIPPED" and "source build" in at_main.reason


def test_at_the_fixed_release_it_is_fixed_upstream(collection, upstream, opts, sites):
    folder = compiler_pack(collection, upstream)
    sh("git", "tag", "v2.0", upstream.fixed, cwd=upstream.path)
    result = run(collection, opts, folder, upstream_ref="v2.0")
    assert result.verdict == "FIXED_UPSTREAM", result.reason
    assert [s.name for s in result.stages] == ["clean"] and sites == [("widgetc==2.0",)]
    assert "released v2.0 (widgetc==2.0)" in result.reason


def test_a_release_that_still_has_the_bug_is_fix_failed(collection, upstream, opts, sites, monkeypatch):
    folder = compiler_pack(collection, upstream)
    (folder / "pack.toml").write_text((folder / "pack.toml").read_text().replace("widgetc==2.0", "widgetc==1.0"))
    result = run(collection, opts, folder)
    assert result.verdict == "FIX_FAILED" and "v2.0 stage said BUG_REPRODUCED" in result.reason


def test_report_table_and_issue_body(collection, upstream, opts, sites):
    folder = compiler_pack(collection, upstream)
    result = run(collection, opts, folder)
    stages = {s.name: s for s in result.stages}
    assert reports._cell(stages, "patched") == "FIX_VALIDATED"
    body = markdown.issue_body(manifest.load_pack(folder, collection.layout), None, collection.layout)
    assert "pip install widgetc==1.0" in body and "pip install widgetc==2.0" in body and "git am" not in body


def test_bundles_refuse_compiler_packs(collection, upstream, tmp_path):
    pack = manifest.load_pack(compiler_pack(collection, upstream), collection.layout)
    with pytest.raises(bundle.BundleError, match="compiler packs cannot be bundled yet"):
        bundle.create([pack], tmp_path / "b", "3.12", ("manylinux",), tmp_path / "cache", [], lambda m: None)


def test_wheel_sites_are_cached_by_pins(tmp_path, monkeypatch):
    calls = []

    def download(specs, dest, python, platforms, progress):
        calls.append(specs)
        dest.mkdir(parents=True)

    monkeypatch.setattr(wheelsite.wheels, "download_wheels", download)
    monkeypatch.setattr(wheelsite.wheels, "unpack_wheels", lambda w, tree, prune: tree.mkdir(parents=True) or [])
    first = wheelsite.site(("a==1",), (), tmp_path, pipeline.sys.executable, lambda m: None)
    again = wheelsite.site(("a==1",), (), tmp_path, pipeline.sys.executable, lambda m: None)
    other = wheelsite.site(("a==2",), (), tmp_path, pipeline.sys.executable, lambda m: None)
    assert first == again != other and calls == [["a==1"], ["a==2"]]
    assert first.is_dir() and not (first.parent / "wheels").exists()
