"""Companion sources: another upstream's pinned release sdist imported next to the target, unpatched."""

import json

from harness.core import manifest
from harness.offline import bundle

from .conftest import run
from .test_sources import index  # noqa: F401 - the loopback package index serving widget-1.0.tar.gz

# The companion sdist holds src/widget/__init__.py (VALUE = 1, OTHER = 'a'); with import path "." it is
# reachable as the namespace package `src`, which the target checkout (import path src/) does not provide.
REPRO = """\
import json, os
import widget
import src.widget as companion
ran_init = hasattr(companion, "OTHER")
print("EVIDENCE " + json.dumps({"value": widget.VALUE, "companion_init_ran": ran_init,
                                "companion_file": companion.__path__[0]}))
print("FIX_VALIDATED" if widget.VALUE >= 2 else "BUG_REPRODUCED")
"""


def companion_line(sha: str, skip: str = "", paths: str = '"."') -> str:
    return (f'companions = [{{ repo = "acme/widget-extras", ref = "v1.0", sdist = "widget==1.0", '
            f'sha256 = "{sha}", import_paths = [{paths}]{skip} }}]')


def test_both_stages_import_the_companion_tree(collection, upstream, opts, index):  # noqa: F811
    folder = collection.add_pack("01", "toy", upstream.base, repro=REPRO, extra_requires=companion_line(index))
    result = run(collection, opts, folder)
    assert result.verdict == "CONFIRMED", result.reason
    assert all(s.evidence["companion_init_ran"] for s in result.stages)
    files = {s.evidence["companion_file"] for s in result.stages}
    assert len(files) == 1 and f"sdist/{index}/tree" in files.pop(), "both stages read the pristine sdist tree"
    assert result.companions == [{**result.companions[0], "kind": "sdist", "sdist": "widget==1.0",
                                  "repo": "acme/widget-extras"}]


def test_companion_skip_init(collection, upstream, opts, index):  # noqa: F811
    line = companion_line(index, skip=', skip_init = ["src.widget"]')
    folder = collection.add_pack("01", "toy", upstream.base, repro=REPRO, extra_requires=line)
    result = run(collection, opts, folder)
    assert result.verdict == "CONFIRMED", result.reason
    assert not any(s.evidence["companion_init_ran"] for s in result.stages)


def test_a_companion_with_the_wrong_sha256_is_an_error(collection, upstream, opts, index):  # noqa: F811
    folder = collection.add_pack("01", "toy", upstream.base, repro=REPRO, extra_requires=companion_line("0" * 64))
    result = run(collection, opts, folder)
    assert result.verdict == "ERROR" and "widget==1.0" in result.reason and not result.stages


def carried_cache(tmp_path, monkeypatch):
    """The source cache of the bundle at tmp_path/b, as the node unpacks it."""
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "node"))
    return bundle.open_bundle(tmp_path / "b", lambda m: None).cache


def test_a_bundle_carries_the_companion(collection, upstream, cache, index, tmp_path, monkeypatch):  # noqa: F811
    folder = collection.add_pack("01", "toy", upstream.base, repro=REPRO, extra_requires=companion_line(index))
    pack = manifest.load_pack(folder, collection.layout)
    made = bundle.create([pack], tmp_path / "b", "3.12", "linux-x86_64", cache, [], collection.layout,
                         tmp_path / "envs", lambda m: None)
    carried = made["packs"]["01-toy"]
    assert [e["companion"] for e in carried] == [False, True]
    entry = carried_cache(tmp_path, monkeypatch) / carried[1]["entry"]
    assert (entry / "tree" / "src" / "widget" / "__init__.py").is_file()


def test_a_bundle_carries_only_a_companions_import_paths(collection, upstream, cache, index, tmp_path,  # noqa: F811
                                                         monkeypatch):
    line = companion_line(index, paths='"src"')
    folder = collection.add_pack("01", "toy", upstream.base, repro=REPRO, extra_requires=line)
    pack = manifest.load_pack(folder, collection.layout)
    made = bundle.create([pack], tmp_path / "b", "3.12", "linux-x86_64", cache, [], collection.layout,
                         tmp_path / "envs", lambda m: None)
    unpacked = carried_cache(tmp_path, monkeypatch)
    entry = unpacked / made["packs"]["01-toy"][1]["entry"]
    assert (entry / "tree" / "src" / "widget" / "__init__.py").is_file() and (entry / "source.json").is_file()
    assert not (entry / "tree" / "PKG-INFO").exists(), "the rest of the sdist stays behind"
    target = unpacked / made["packs"]["01-toy"][0]["entry"]
    assert any(target.rglob("*.py")) and (target / "tree").is_dir(), "the target is whole"
    cut = json.loads((entry / "manifest.json").read_text())["files"]
    assert cut and all(p.startswith("src/") for p in cut), "the carried manifest is cut to the import paths"


def test_the_issue_body_names_the_companion(collection, upstream, index):  # noqa: F811
    from harness.report import issue

    folder = collection.add_pack("01", "toy", upstream.base, repro=REPRO, extra_requires=companion_line(index))
    pack = manifest.load_pack(folder, collection.layout)
    body = issue.body(pack, None, collection.layout)
    assert "git -C widget-extras fetch -q --depth 1 https://github.com/acme/widget-extras tag v1.0" in body
    assert "PYTHONPATH=upstream/src:widget-extras python repro.py" in body and "widget==1.0, imported unpatched" in body
