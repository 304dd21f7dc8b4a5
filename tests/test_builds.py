"""Distributions built from source in an environment (stacks/<stack>/builds.toml): parsed strictly, built
once with the environment's interpreter, kept in the unit store and reused, carried between machines with
their sha256 checked."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness.envs import builds, locks, provision
from harness.envs.provision import FolderSource

from .envkit import PYTHON, make_wheel, sha256, toy_stack

SETUP_PY = """import os
from setuptools import setup
os.makedirs("toybuilt", exist_ok=True)
with open("toybuilt/__init__.py", "w") as f:
    f.write(f"FLAG = {os.environ.get('TOY_FLAG')!r}\\n")
setup(name="toybuilt", version="1.0", packages=["toybuilt"])
"""


def make_sdist(folder: Path, setup_py: str = SETUP_PY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toybuilt-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for rel, text in {"setup.py": setup_py,
                          "PKG-INFO": "Metadata-Version: 2.1\nName: toybuilt\nVersion: 1.0\n"}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"toybuilt-1.0/{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def add_builds(layout, sdist: Path, stack: str = "toy", sha: str | None = None) -> None:
    (layout.root / "stacks" / stack / "builds.toml").write_text(
        f'[[build]]\nname = "toybuilt"\nversion = "1.0"\nsdist_sha256 = "{sha or sha256(sdist)}"\n'
        'environment = { TOY_FLAG = "from-builds-toml" }\n')


def quiet(_msg):
    pass


def needs_a_wheel_builder() -> None:
    """pip wheel --no-build-isolation uses this interpreter's setuptools: it needs bdist_wheel (setuptools
    70.1+, or the wheel package)."""
    pytest.importorskip("setuptools")
    try:
        import setuptools.command.bdist_wheel  # noqa: F401, PLC0415
    except ImportError:
        pytest.importorskip("wheel", reason="this interpreter's setuptools cannot build wheels (no bdist_wheel)")


def test_builds_toml_is_parsed_strictly(tmp_path):
    (tmp_path / "builds.toml").write_text('[[build]]\nname = "Toy_Built"\nversion = "1.0"\nsdist_sha256 = "'
                                          + "a" * 64 + '"\n')
    (build,), digest = builds.load(tmp_path)
    assert build.name == "toy-built" and build.requirement == "toy-built==1.0" and len(digest) == 64
    assert build.key("3.12", "linux-x86_64", "2.11.0", "13.0") != build.key("3.12", "linux-x86_64", "2.10.0", "13.0")
    (tmp_path / "builds.toml").write_text('[[build]]\nname = "x"\nversion = "1"\nsdist_sha256 = "ABC"\n')
    with pytest.raises(builds.BuildError, match="64 lower-case hex"):
        builds.load(tmp_path)
    (tmp_path / "builds.toml").write_text('[[build]]\nname = "x"\n')
    with pytest.raises(builds.BuildError, match="needs name, version and sdist_sha256"):
        builds.load(tmp_path)
    assert builds.load(tmp_path / "none") == ((), None)


def test_a_real_sdist_is_built_with_the_given_interpreter_and_its_variables(tmp_path):
    needs_a_wheel_builder()
    sdist = make_sdist(tmp_path / "sd")
    build = builds.Build("toybuilt", "1.0", sha256(sdist), (("TOY_FLAG", "from-builds-toml"),))
    unit, record = builds.build_wheel(build, sdist, sys.executable, tmp_path / "site", tmp_path / "store", "k1",
                                      {"torch": None}, quiet)
    assert (unit.tree / "toybuilt" / "__init__.py").read_text() == "FLAG = 'from-builds-toml'\n"
    assert record["wheel_sha256"] == unit.sha256 and record["build_seconds"] >= 0
    assert builds.built_unit(tmp_path / "store", "k1")[0].sha256 == unit.sha256


def test_a_failed_build_names_the_requirement_and_keeps_its_log(tmp_path):
    needs_a_wheel_builder()
    sdist = make_sdist(tmp_path / "sd", "raise SystemExit('no compiler here')\n")
    build = builds.Build("toybuilt", "1.0", sha256(sdist))
    with pytest.raises(builds.BuildError, match=r"building toybuilt==1.0 from its sdist failed .*log: .*k2\.log"):
        builds.build_wheel(build, sdist, sys.executable, tmp_path / "site", tmp_path / "store", "k2", {}, quiet)
    assert (tmp_path / "store" / "built" / "k2.log").is_file()


def _fake_build(calls):
    """build_wheel without the compile: a ready wheel, kept the way a real build keeps its own."""
    def fake(build, sdist, python, site, store_dir, key, facts, progress):
        calls.append((sdist.name, Path(python).parent.parent.name, site.name))
        wheel = make_wheel(store_dir / "tmp" / "fake", "toybuilt", "1.0", {"toybuilt/__init__.py": "FLAG = 1\n"})
        record = {"name": "toybuilt", "version": "1.0", "key": key, "wheel": wheel.name,
                  "wheel_sha256": sha256(wheel), "build_seconds": 1.0, **facts}
        return builds.keep(store_dir, wheel, record), record
    return fake


def test_an_environment_builds_once_and_a_later_one_reuses_the_build(collection, tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh")
    sdist = make_sdist(tmp_path / "wh")
    add_builds(collection.layout, sdist)
    calls = []
    monkeypatch.setattr(builds, "build_wheel", _fake_build(calls))
    lock = locks.load(collection.layout, "toy", PYTHON, "linux-x86_64")
    source = FolderSource(tmp_path / "envs" / "store", tmp_path / "wh")
    env = provision.provide(lock, sys.executable, tmp_path / "envs", source, quiet)
    (built,) = env.record["built"]
    assert built["state"] == "built" and built["sdist_sha256"] == sha256(sdist) and len(calls) == 1
    assert calls[0][1].startswith(".toy-py")  # with the environment's own interpreter, while it is made
    assert calls[0][2] == "site-packages"
    out = subprocess.run([env.python, "-c", "import toybuilt, toydep; print(toybuilt.FLAG, toydep.VALUE)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "7"]
    builds.fsutil.remove_tree(env.path)
    again = provision.provide(lock, sys.executable, tmp_path / "envs", source, quiet)
    assert again.record["built"][0]["state"] == "reused" and len(calls) == 1


def test_an_sdist_that_is_not_the_pinned_one_is_refused(collection, tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh")
    sdist = make_sdist(tmp_path / "wh")
    add_builds(collection.layout, sdist, sha="b" * 64)
    monkeypatch.setattr(builds, "build_wheel", _fake_build([]))
    lock = locks.load(collection.layout, "toy", PYTHON, "linux-x86_64")
    with pytest.raises(provision.EnvError, match=r"has no sdist of toybuilt==1.0 with sha256 bbbbbbbbbbbb"):
        provision.provide(lock, sys.executable, tmp_path / "envs", FolderSource(tmp_path / "envs" / "store",
                                                                                  tmp_path / "wh"), quiet)


def test_a_built_wheel_travels_with_its_record_and_is_checked_on_the_way_in(collection, tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh")
    add_builds(collection.layout, make_sdist(tmp_path / "wh"))
    calls = []
    monkeypatch.setattr(builds, "build_wheel", _fake_build(calls))
    lock = locks.load(collection.layout, "toy", PYTHON, "linux-x86_64")
    provision.provide(lock, sys.executable, tmp_path / "envs", FolderSource(tmp_path / "envs" / "store",
                                                                              tmp_path / "wh"), quiet)
    names = builds.export_built(tmp_path / "envs" / "store", tmp_path / "carried")
    assert len(names) == 2
    # another machine: its own store; the carried build is reused, nothing is built there
    other = tmp_path / "other"
    assert builds.main(["--store", str(other / "store"), "--import-built", str(tmp_path / "carried")]) == 0
    env = provision.provide(lock, sys.executable, other, FolderSource(other / "store", tmp_path / "wh"), quiet)
    assert env.record["built"][0]["state"] == "reused" and len(calls) == 1
    wheel = next((tmp_path / "carried").glob("*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"x")
    with pytest.raises(builds.BuildError, match="its sha256 is not the one its record"):
        builds.import_built(tmp_path / "third", tmp_path / "carried")


def test_two_units_installing_the_same_bytes_are_linked_once_and_different_bytes_refused(tmp_path):
    a = make_wheel(tmp_path / "a", "core", "1.0", {"pkg/__init__.py": "X = 1\n"})
    b = make_wheel(tmp_path / "b", "meta", "1.0", {"pkg/__init__.py": "X = 1\n"})
    c = make_wheel(tmp_path / "c", "other", "1.0", {"pkg/__init__.py": "X = 2\n"})
    units = [builds.store.add_wheel(tmp_path / "store", w, n, "1.0", sha256(w)) for n, w in
             (("core", a), ("meta", b), ("other", c))]
    provision._link_units(units[:2], tmp_path / "site")
    assert (tmp_path / "site" / "pkg" / "__init__.py").read_text() == "X = 1\n"
    with pytest.raises(builds.store.StoreError, match="both install pkg/__init__.py, differently"):
        provision._link_units([units[0], units[2]], tmp_path / "site2")
