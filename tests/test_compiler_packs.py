"""Compiler packs: the stages run in two environments, the base release's stack and the fixed release's,
and nothing is patched."""

import json

import pytest

from harness.cli import main as cli
from harness.core import manifest
from harness.envs import locks
from harness.envs.provision import FolderSource
from harness.offline import bundle
from harness.report import issue
from harness.report import outputs as reports

from .conftest import git_commit, run, sh
from .envkit import PYTHON, add_stack, make_wheel

pytestmark = pytest.mark.skipif(locks.host_platform() != "linux-x86_64", reason="locks are made for linux x86_64")

REPRO = """\
import json
import widgetc
print("EVIDENCE " + json.dumps({"compiler": widgetc.VERSION, "divides_by_zero": widgetc.BUGGY}))
print("INCONCLUSIVE" if widgetc.BUGGY is None else "BUG_REPRODUCED" if widgetc.BUGGY else "FIX_VALIDATED")
"""

COMPILER = """
[compiler]
package = "widgetc"
fixed_release = "v2.0"
fix_commit = "b8dc37e66f6e"
base_wheels = ["widgetc==1.0"]
fixed_wheels = ["widgetc==2.0"]
fixed_stack = "widgetc-2"
"""


@pytest.fixture
def wheels(collection, tmp_path):
    """Two stacks, one release of the toy compiler each."""
    folder = tmp_path / "wheels"
    for version, stack in (("1.0", "widgetc-1"), ("2.0", "widgetc-2")):
        wheel = make_wheel(folder, "widgetc", version,
                           {"widgetc/__init__.py": f"VERSION = {version!r}\nBUGGY = {version == '1.0'}\n"})
        add_stack(collection.layout, stack, [("widgetc", version, wheel)])
    return folder


def compiler_pack(collection, upstream, extra=""):
    folder = collection.add_pack("13", "toyc", upstream.base, repro=REPRO, patch=None, expect=extra,
                                 extra_requires='stack = "widgetc-1"')
    (folder / "pack.toml").write_text((folder / "pack.toml").read_text() + COMPILER)
    return folder


def go(collection, opts, folder, tmp_path, wheels, **kw):
    return run(collection, opts, folder, env_dir=tmp_path / "envs", units=FolderSource(tmp_path / "envs" / "store",
                                                                                        wheels), **kw)


def test_base_release_then_fixed_release_is_confirmed(collection, upstream, opts, tmp_path, wheels):
    folder = compiler_pack(collection, upstream)
    result = go(collection, opts, folder, tmp_path, wheels)
    assert result.verdict == "CONFIRMED", result.reason
    assert [s.name for s in result.stages] == ["clean", "fixed-release"]
    assert [s.evidence["compiler"] for s in result.stages] == ["1.0", "2.0"]
    assert [s.environment["stack"] for s in result.stages] == ["widgetc-1", "widgetc-2"]
    assert "released v2.0" in result.reason and "not by applying a patch" in result.reason
    assert result.patch["status"] == "no_patch" and result.patch["fixed_release"] == "v2.0"
    assert manifest.load_pack(folder, collection.layout).has_patch is False


def test_check_only_and_upstream_refs(collection, upstream, opts, tmp_path, wheels):
    folder = compiler_pack(collection, upstream)
    checked = go(collection, opts, folder, tmp_path, wheels, check_only=True)
    assert checked.verdict == "CHECKED" and "no patch" in checked.reason and not (tmp_path / "envs").exists()
    at_main = go(collection, opts, folder, tmp_path, wheels, upstream_ref="main")
    assert at_main.verdict == "SKIPPED" and "source build" in at_main.reason
    assert at_main.as_expected, "by design: a --strict nightly at main must not fail on it"


def test_at_the_fixed_release_it_is_fixed_upstream(collection, upstream, opts, tmp_path, wheels):
    folder = compiler_pack(collection, upstream)
    sh("git", "tag", "v2.0", upstream.fixed, cwd=upstream.path)
    result = go(collection, opts, folder, tmp_path, wheels, upstream_ref="v2.0")
    assert result.verdict == "FIXED_UPSTREAM", result.reason
    assert [s.name for s in result.stages] == ["clean"] and result.stages[0].environment["stack"] == "widgetc-2"
    assert "released v2.0 (widgetc==2.0)" in result.reason


def test_a_release_that_still_has_the_bug_is_fix_failed(collection, upstream, opts, tmp_path, wheels):
    folder = compiler_pack(collection, upstream)
    (folder / "pack.toml").write_text((folder / "pack.toml").read_text().replace('fixed_stack = "widgetc-2"',
                                                                                 'fixed_stack = "widgetc-1"'))
    result = go(collection, opts, folder, tmp_path, wheels)
    assert result.verdict == "FIX_FAILED" and "v2.0 stage said BUG_REPRODUCED" in result.reason


def test_lint_checks_each_stack_pins_its_release(collection, upstream, wheels):
    folder = compiler_pack(collection, upstream)
    pack = manifest.load_pack(folder, collection.layout)
    assert locks.pack_problems(pack, collection.layout) == []
    (folder / "pack.toml").write_text((folder / "pack.toml").read_text().replace('fixed_wheels = ["widgetc==2.0"]',
                                                                                 'fixed_wheels = ["widgetc==3.0"]'))
    problems = locks.pack_problems(manifest.load_pack(folder, collection.layout), collection.layout)
    assert any("stack 'widgetc-2' pins widgetc==2.0, the pack needs widgetc==3.0" in p for p in problems)


def test_report_table_and_issue_body(collection, upstream, opts, tmp_path, wheels):
    folder = compiler_pack(collection, upstream)
    result = go(collection, opts, folder, tmp_path, wheels)
    stages = {s.name: s for s in result.stages}
    assert reports._cell(stages, "patched") == "FIX_VALIDATED"
    body = issue.body(manifest.load_pack(folder, collection.layout), None, collection.layout)
    assert "pip install widgetc==1.0" in body and "pip install widgetc==2.0" in body and "git -C" not in body


def test_a_bundle_carries_both_stacks_and_the_node_runs_both(collection, upstream, cache, tmp_path, wheels,
                                                               monkeypatch):
    compiler_pack(collection, upstream)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    out = tmp_path / "b"
    assert cli.main(["--bundle", str(out), "--pack", "13", "--cache-dir", str(cache), "--python", PYTHON,
                     "--env-dir", str(tmp_path / "envs-here")], layout=collection.layout) == cli.EXIT_OK
    made = json.loads((out / "bundle.json").read_text())
    assert set(made["stacks"]) == {"widgetc-1", "widgetc-2"} and len(made["units"]) == 2
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://nowhere.invalid/")
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "unpacked"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "none"))
    args = ["--offline", str(out), "--pack", "13", "--cache-dir", str(tmp_path / "c2"), "--env-dir",
            str(tmp_path / "envs-node"), "--run-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    result = json.loads((tmp_path / "r.json").read_text())["packs"][0]
    assert result["verdict"] == "CONFIRMED" and [s["evidence"]["compiler"] for s in result["stages"]] == ["1.0", "2.0"]


def test_a_bundle_for_main_leaves_out_what_cannot_run_there(collection, upstream, cache, tmp_path, wheels,
                                                             monkeypatch):
    """--bundle-ref main: a compiler pack is SKIPPED at main, so main's tree is not carried; and a ref whose
    tree lacks the pack's source paths is left out with a line instead of failing the whole bundle."""
    pack = manifest.load_pack(compiler_pack(collection, upstream), collection.layout)
    (upstream.path / "docs.txt").unlink()
    git_commit(upstream.path, "docs.txt moved away on main")
    plain = manifest.load_pack(collection.add_pack("01", "gone", upstream.base, extra_requires='stack = "widgetc-1"',
                                                   source='[source]\npaths = ["src", "docs.txt"]'), collection.layout)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    said: list[str] = []
    made = bundle.create([pack, plain], tmp_path / "b", PYTHON, "linux-x86_64", cache, ["main"], collection.layout,
                         tmp_path / "envs", said.append)
    assert [e["ref"] for e in made["packs"][pack.name]] == ["v1.0"], "the compiler pack: its base only"
    assert any(f"{pack.name}: not carrying main: a compiler pack" in line for line in said)
    assert any(f"{plain.name}: not carrying main" in line and "docs.txt" in line for line in said)
    assert [e["ref"] for e in made["packs"][plain.name]] == ["v1.0"]
