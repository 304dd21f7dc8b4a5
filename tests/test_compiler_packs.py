"""Compiler packs: the stages import two compiler releases (unpacked wheels), nothing is patched."""

import pytest

from harness.core import manifest
from harness.envs import wheelsite
from harness.offline import bundle
from harness.report import markdown
from harness.report import outputs as reports

from .conftest import git_commit, run, sh

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

    def fake_site(pins, prune, cache, version, progress, archives=None):
        asked.append(pins)
        version = pins[0].split("==")[1]
        tree = tmp_path / "sites" / version / "widgetc"
        tree.mkdir(parents=True, exist_ok=True)
        (tree / "__init__.py").write_text(f"VERSION = {version!r}\nBUGGY = {version == '1.0'}\n")
        return [tree.parent]

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
    assert at_main.as_expected, "by design: a --strict nightly at main must not fail on it"


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


def test_a_bundle_carries_both_wheel_sets_once_and_the_node_unpacks_them(collection, upstream, cache, tmp_path,
                                                                          monkeypatch):
    folder = compiler_pack(collection, upstream)
    text = (folder / "pack.toml").read_text()
    (folder / "pack.toml").write_text(text.replace('"widgetc==1.0"]', '"widgetc==1.0", "shared==3"]')
                                          .replace('"widgetc==2.0"]', '"widgetc==2.0", "shared==3"]'))
    pack = manifest.load_pack(folder, collection.layout)
    downloaded = []
    monkeypatch.setattr(bundle, "runner_requirements", lambda: [])
    monkeypatch.setattr(bundle, "download_wheels",
                        lambda specs, dest, *a: downloaded.append(specs) or dest.mkdir(parents=True))

    def unpack(wheels_dir, tree, prune):  # each part: its own top-level file, and a folder both parts have
        (tree / "marker").mkdir(parents=True)
        (tree / "marker" / tree.name).write_text("x")
        (tree / f"{tree.name}.py").write_text("")
        return []

    monkeypatch.setattr(bundle, "unpack_wheels", unpack)
    made = bundle.create([pack], tmp_path / "b", "3.12", ("manylinux",), cache, [], lambda m: None)
    assert sorted(downloaded) == [[], [], ["shared==3"], ["widgetc==1.0"], ["widgetc==2.0"]]  # [], []: no pins
    base, fixed = (wheelsite.key(pins, pack.bundle_prune, "3.12")
                   for pins in (pack.compiler.base_wheels, pack.compiler.fixed_wheels))
    sites = made["compiler_sites"]
    assert set(sites) == {base, fixed} and sites[base][1] == sites[fixed][1], "the shared pins travel once"
    assert all((tmp_path / "b" / a).is_file() for parts in sites.values() for a in parts)
    archives = bundle.wheel_archives(tmp_path / "b", made)
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "unpack"))
    monkeypatch.setattr(wheelsite.wheels, "download_wheels", lambda *a: pytest.fail("offline: no download"))
    got = wheelsite.site(pack.compiler.fixed_wheels, pack.bundle_prune, cache, "3.12", lambda m: None, archives)
    # one tree, as pip installs a set: tilelang's libraries reach z3's through $ORIGIN/../../z3/lib
    parts = [a.removeprefix("compiler-").removesuffix(".tar.xz") for a in sites[fixed]]
    assert len(got) == 1 and sorted(p.name for p in got[0].iterdir()) == sorted([*(f"{p}.py" for p in parts), "marker"])
    assert sorted(p.name for p in (got[0] / "marker").iterdir()) == sorted(parts), "shared folders merge"
    assert wheelsite.site(pack.compiler.fixed_wheels, pack.bundle_prune, cache, "3.12", lambda m: None,
                          archives) == got, "unpacked once"


def test_wheel_sites_are_cached_by_pins(tmp_path, monkeypatch):
    calls = []

    def download(specs, dest, python, platforms, progress):
        calls.append(specs)
        dest.mkdir(parents=True)

    monkeypatch.setattr(wheelsite.wheels, "download_wheels", download)
    monkeypatch.setattr(wheelsite.wheels, "unpack_wheels", lambda w, tree, prune: tree.mkdir(parents=True) or [])
    first = wheelsite.site(("a==1",), (), tmp_path, "3.11", lambda m: None)
    again = wheelsite.site(("a==1",), (), tmp_path, "3.11", lambda m: None)
    other = wheelsite.site(("a==2",), (), tmp_path, "3.11", lambda m: None)
    assert first == again != other and calls == [["a==1"], ["a==2"]]
    assert first[0].is_dir() and not (first[0].parent / "wheels").exists()


def test_a_bundle_for_main_leaves_out_what_cannot_run_there(collection, upstream, cache, tmp_path, monkeypatch):
    """--bundle-ref main: a compiler pack is SKIPPED at main, so main's tree is not carried; and a ref whose
    tree lacks the pack's source paths is left out with a line instead of failing the whole bundle."""
    pack = manifest.load_pack(compiler_pack(collection, upstream), collection.layout)
    (upstream.path / "docs.txt").unlink()
    git_commit(upstream.path, "docs.txt moved away on main")
    plain = manifest.load_pack(collection.add_pack("01", "gone", upstream.base,
                                                   source='[source]\npaths = ["src", "docs.txt"]'), collection.layout)
    monkeypatch.setattr(bundle, "runner_requirements", lambda: [])
    monkeypatch.setattr(bundle, "download_wheels", lambda specs, dest, *a: dest.mkdir(parents=True))
    monkeypatch.setattr(bundle, "unpack_wheels", lambda w, tree, prune: tree.mkdir(parents=True) or [])
    said: list[str] = []
    made = bundle.create([pack, plain], tmp_path / "b", "3.12", ("manylinux",), cache, ["main"], said.append)
    assert [e["ref"] for e in made["packs"][pack.name]] == ["v1.0"], "the compiler pack: its base only"
    assert any(f"{pack.name}: not carrying main: a compiler pack" in line for line in said)
    assert any(f"{plain.name}: not carrying main" in line and "docs.txt" in line for line in said)
    assert [e["ref"] for e in made["packs"][plain.name]] == ["v1.0"]
