"""Offline bundles: the packs' stacks as units, their sources and the runner's own dependencies, made from a
local wheel folder standing in for the index, verified before anything is unpacked or imported, and run
from with no network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.core import fsutil, treehash
from harness.envs import locks
from harness.offline import boot, bundle

from .envkit import PYTHON, add_stack, make_wheel, toy_stack

pytestmark = pytest.mark.skipif(locks.host_platform() != "linux-x86_64", reason="locks are made for linux x86_64")

REPRO = (
    "import json, toydep, widget\n"
    "print('EVIDENCE ' + json.dumps({'value': widget.VALUE, 'toydep': toydep.VALUE}))\n"
    "print('FIX_VALIDATED' if widget.VALUE >= 2 else 'INCONCLUSIVE' if widget.VALUE < 0 else 'BUG_REPRODUCED')\n"
)


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A find-links folder in place of the package index (pip reads it in hash-checking mode)."""
    folder = tmp_path / "index"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("REPRO_ENV_DIR", str(tmp_path / "envs-here"))
    return folder


@pytest.fixture
def made(collection, upstream, cache, tmp_path, index):
    toy_stack(collection.layout, index, value=5)
    make_wheel(index, "unused", "1.0", {"unused/big/blob.bin": "x" * 100, "unused/__init__.py": ""})
    runner = make_wheel(index, "runnerdep", "2.0", {"runnerdep/__init__.py": "MARK = 1\n"})
    add_stack(collection.layout, "runner", [("runnerdep", "2.0", runner)])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO, extra_requires='stack = "toy"')
    out = tmp_path / "bundle"
    assert cli.main(["--bundle", str(out), "--pack", "01", "--cache-dir", str(cache), "--python", PYTHON],
                    layout=collection.layout) == cli.EXIT_OK
    return out


def node(monkeypatch, tmp_path) -> list[str]:
    """A node: the upstream URL leads nowhere, a fresh cache and environment folder, only the bundle."""
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://nowhere.invalid/")
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "unpacked"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nothing-here"))
    return ["--cache-dir", str(tmp_path / "empty-cache"), "--env-dir", str(tmp_path / "envs-node"),
            "--run-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "r.json")]


def test_bundle_then_offline_run(collection, made, tmp_path, monkeypatch):
    manifest = json.loads((made / "bundle.json").read_text())
    assert manifest["format"] == boot.FORMAT and set(manifest["stacks"]) == {"toy"}
    assert [u["name"] for u in manifest["units"].values()] == ["toydep"]
    assert [u["name"] for u in manifest["runner_units"].values()] == ["runnerdep"]
    assert set(manifest["archives"].values()) <= set(manifest["files"])
    assert not list(made.rglob(".git")), "bundled trees carry no .git"
    args = ["--offline", str(made), "--pack", "01", *node(monkeypatch, tmp_path)]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    result = json.loads((tmp_path / "r.json").read_text())["packs"][0]
    assert result["verdict"] == "CONFIRMED", result["reason"]
    assert result["stages"][0]["evidence"] == {"value": 1, "toydep": 5}
    assert result["stages"][0]["environment"]["provisioned_from"] == f"bundle {made}"
    assert result["bundle"]["stacks"] == ["toy"]


def test_a_changed_file_is_refused_before_anything_is_unpacked(collection, made, tmp_path, monkeypatch, capsys):
    archive = made / bundle.SOURCES
    archive.write_bytes(archive.read_bytes() + b"\0")
    args = ["--offline", str(made), "--pack", "01", *node(monkeypatch, tmp_path)]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_USAGE
    assert "changed since bundling" in capsys.readouterr().err
    assert not (tmp_path / "unpacked").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["archives"].update(units="../elsewhere.tar.xz"), "outside the bundle"),
    (lambda m: m["archives"].update(units="/etc/passwd"), "outside the bundle"),
    (lambda m: m["archives"].update(units="not-listed.tar.xz"), "not among the hashed files"),
    (lambda m: m["files"].update({"../up.txt": "0" * 64}), "outside the bundle"),
    (lambda m: m.pop("units"), "has no 'units'"),
    (lambda m: m.pop("files"), "has no 'files'"),
    (lambda m: m.update(format=1), "made by an older runner"),
    (lambda m: m.update(files=["a"]), "not a table"),
])
def test_a_manifest_that_names_what_it_does_not_hash_is_refused(collection, made, tmp_path, monkeypatch, capsys,
                                                                 edit, message):
    path = made / "bundle.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    args = ["--offline", str(made), "--pack", "01", *node(monkeypatch, tmp_path)]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_boot_checks_the_runner_site_before_anything_of_it_is_importable(made, tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_OFFLINE_UNPACK", str(tmp_path / "unpacked"))
    monkeypatch.setattr(sys, "path", ["first"])
    boot.VERIFIED.clear()
    boot.boot(["--offline", str(made)])
    assert sys.path[0] == "first" and (Path(sys.path[-1]) / "runnerdep" / "__init__.py").is_file()
    archive = made / bundle.RUNNER_SITE
    archive.write_bytes(archive.read_bytes()[:-1] + b"X")  # a changed runner site (code that would run at import)
    monkeypatch.setattr(sys, "path", ["first"])
    boot.VERIFIED.clear()
    with pytest.raises(SystemExit) as stop:
        boot.boot(["--offline", str(made)])
    assert stop.value.code == 2 and sys.path == ["first"]


def test_a_seeded_unpack_folder_is_unpacked_again(collection, made, tmp_path, monkeypatch):
    args = ["--offline", str(made), "--pack", "01", *node(monkeypatch, tmp_path)]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    unpacked = boot.unpack_dir(made) / "units"
    unit = next(p for p in unpacked.iterdir() if (p / "tree" / "toydep").is_dir())
    planted = unit / "tree" / "toydep" / "__init__.py"
    planted.write_text("VALUE = 666\n")  # someone else's folder, with its .done marker in place
    meta = json.loads((unit / "unit.json").read_text())
    meta["files"]["toydep/__init__.py"] = treehash.manifest(unit / "tree")[0]["toydep/__init__.py"]
    (unit / "unit.json").write_text(json.dumps(meta))  # even with a manifest that matches it
    boot.VERIFIED.clear()
    assert cli.main([*args, "--env-dir", str(tmp_path / "envs-node-2")], layout=collection.layout) == cli.EXIT_OK
    result = json.loads((tmp_path / "r.json").read_text())["packs"][0]
    assert result["stages"][0]["evidence"]["toydep"] == 5


def test_a_node_whose_lock_changed_is_told_to_bundle_again(collection, made, tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "other-wheels", value=6, version="1.1")
    args = ["--offline", str(made), "--pack", "01", *node(monkeypatch, tmp_path)]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    result = json.loads((tmp_path / "r.json").read_text())["packs"][0]
    assert result["verdict"] == "SKIPPED" and "does not carry toydep==1.1" in result["reason"]
    assert "make it again" in result["reason"]


def test_a_bundle_made_by_an_older_runner_says_how_to_make_a_new_one(collection, made, tmp_path, monkeypatch, capsys):
    (made / "bundle.json").write_text(json.dumps({"created_at": "x", "files": {}, "runner_site": "runner-site.tar.xz"}))
    args = ["--offline", str(made), "--pack", "01", *node(monkeypatch, tmp_path)]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_USAGE
    assert "make it again with python runner.py --bundle" in capsys.readouterr().err


def test_prune_paths_leave_the_bundle(collection, upstream, cache, tmp_path, index):
    wheel = make_wheel(index, "toydep", "1.0", {"toydep/__init__.py": "VALUE = 5\n", "toydep/big/blob.bin": "x" * 10})
    add_stack(collection.layout, "toy", [("toydep", "1.0", wheel)])
    collection.add_pack("01", "toy", upstream.base, repro=REPRO,
                        extra_requires='stack = "toy"\nbundle_prune = ["toydep/big"]')
    out = tmp_path / "bundle"
    assert cli.main(["--bundle", str(out), "--pack", "01", "--cache-dir", str(cache), "--python", PYTHON],
                    layout=collection.layout) == cli.EXIT_OK
    unit = next(iter(json.loads((out / "bundle.json").read_text())["units"].values()))
    assert unit["pruned"] == ["toydep/big"]


def _unpack_at_once(args):
    target, log = args

    def fill(t: Path) -> None:
        t.mkdir(parents=True)
        with open(log, "a") as fh:
            fh.write("filled\n")
        import time  # noqa: PLC0415 - slow enough for the others to arrive while it fills

        time.sleep(0.5)
        (t / "payload").write_text("complete\n")

    done = fsutil.once(Path(target), fill, lambda t: (t / "payload").read_text() == "complete\n")
    return (done / "payload").read_text()


def test_runs_that_open_one_bundle_at_once_unpack_it_once(tmp_path):
    """Three runs started together on one bundle: one unpacks (into a staging folder, renamed into place),
    the others wait and reuse it; nobody reads a half-unpacked folder or removes the one being filled."""
    import multiprocessing  # noqa: PLC0415

    target, log = tmp_path / "unpack" / "units", tmp_path / "fills.log"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        got = pool.map(_unpack_at_once, [(str(target), str(log))] * 3)
    assert got == ["complete\n"] * 3
    assert log.read_text() == "filled\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["units", "units.done", "units.lock"]
