"""Pinned environments: locks in uv's format, an environment made once from the lock's units and reused,
never half-made, never from a file the lock does not pin, one builder at a time, checked before reuse; the
runtime reused only when it is the locked build; the pack's stages run in it."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core import fsutil, manifest
from harness.envs import locks, provision, store, wheels
from harness.envs.provision import EnvError, FolderSource, IndexSource
from harness.run import pipeline

from .conftest import REPRO_OK, run
from .envkit import PYTHON, add_stack, make_wheel, sha256, toy_stack

PLATFORM = "linux-x86_64"
pytestmark = pytest.mark.skipif(locks.host_platform() != PLATFORM, reason="locks are made for linux x86_64 only")


def load(layout, stack="toy"):
    return locks.load(layout, stack, PYTHON, PLATFORM)


def quiet(_msg):
    pass


def test_a_uv_lock_parses_with_continuations_and_its_source_digest(collection, tmp_path):
    toy_stack(collection.layout, tmp_path / "wh")
    lock = load(collection.layout)
    assert [(p.name, p.version) for p in lock.pins] == [("toydep", "1.0")]
    assert lock.source_sha256 == locks.source_sha256(collection.layout, "toy")
    assert locks.stale(collection.layout, "toy") == []
    (collection.layout.root / "stacks" / "toy" / "requirements.in").write_text("toydep==2.0\n")
    assert "was made from another requirements.in" in locks.stale(collection.layout, "toy")[0]


@pytest.mark.parametrize("text, message", [
    ("toydep>=1.0 --hash=sha256:" + "a" * 64 + "\n", "is not 'name==version"),
    ("toydep==1.0\n", "is not 'name==version"),
    ("toydep==1.0 --hash=sha256:abc\n", "64 lower-case hex"),
    ("toydep==1.0 --hash=md5:" + "a" * 32 + "\n", "64 lower-case hex"),
    ("-e ./here\n", "is not 'name==version"),
    ("toydep==1.0 \\\n", "ends inside a continued line"),
    ("a==1 --hash=sha256:" + "a" * 64 + "\nA==2 --hash=sha256:" + "b" * 64 + "\n", "pinned twice"),
    ("# only a comment\n", "no pinned requirement"),
    ("https://example.invalid/x.whl\n", "is not 'name==version"),
])
def test_malformed_locks_are_refused(text, message):
    with pytest.raises(locks.StackError, match=message):
        locks.parse(text, "lock.txt")


def test_an_environment_is_made_once_then_reused(collection, tmp_path):
    toy_stack(collection.layout, tmp_path / "wh", value=7)
    source = FolderSource(tmp_path / "envs" / "store", tmp_path / "wh")
    seen = []
    env = provision.provide(load(collection.layout), sys.executable, tmp_path / "envs", source, seen.append)
    assert env.record["state"] == "created" and env.record["installed"] == ["toydep==1.0"]
    assert env.record["runtime"]["mode"] == "none" and "making it" in seen[0]
    out = subprocess.run([env.python, "-c", "import toydep, sys; print(toydep.VALUE, sys.prefix)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["7", str(env.path)]
    again = provision.provide(load(collection.layout), sys.executable, tmp_path / "envs", source, quiet)
    assert again.record["state"] == "reused" and again.path == env.path
    assert env.verify() == []


def test_a_wheel_the_lock_does_not_pin_installs_nothing(collection, tmp_path):
    toy_stack(collection.layout, tmp_path / "wh")
    make_wheel(tmp_path / "other", "toydep", "1.0", {"toydep/__init__.py": "VALUE = 666\n"})  # same name, other bytes
    source = FolderSource(tmp_path / "envs" / "store", tmp_path / "other")
    with pytest.raises(EnvError, match="no wheel of toydep==1.0 for Python [0-9.]+ with a sha256 the lock pins"):
        provision.provide(load(collection.layout), sys.executable, tmp_path / "envs", source, quiet)
    assert not any(p.name.startswith("toy-") for p in (tmp_path / "envs").iterdir())  # nothing was left in place
    assert not any((tmp_path / "envs" / "tmp").iterdir())


def test_a_downloaded_file_that_does_not_match_the_lock_is_named(collection, tmp_path, monkeypatch):
    """pip in hash-checking mode, from a local find-links folder standing in for the index."""
    toy_stack(collection.layout, tmp_path / "wh")
    (tmp_path / "wh" / "toydep-1.0-py3-none-any.whl").unlink()
    make_wheel(tmp_path / "wh", "toydep", "1.0", {"toydep/__init__.py": "VALUE = 666\n"})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wh"))
    with pytest.raises(EnvError, match="does not match the lock's sha256 .nothing was installed.*toydep"):
        provision.provide(load(collection.layout), sys.executable, tmp_path / "envs",
                          IndexSource(tmp_path / "envs" / "store"), quiet)


def test_online_provisioning_downloads_with_pip_in_hash_checking_mode(collection, tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh", value=3)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wh"))
    env = provision.provide(load(collection.layout), sys.executable, tmp_path / "envs",
                            IndexSource(tmp_path / "envs" / "store"), quiet)
    assert env.record["provisioned_from"] == "the package index"
    assert subprocess.run([env.python, "-c", "import toydep; print(toydep.VALUE)"], capture_output=True,
                          text=True).stdout.strip() == "3"


def test_a_cut_off_build_is_never_reused(collection, tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh")
    source = FolderSource(tmp_path / "envs" / "store", tmp_path / "wh")

    def cut(*a, **k):
        raise KeyboardInterrupt("cut off")

    monkeypatch.setattr(provision, "_link_units", cut)
    with pytest.raises(KeyboardInterrupt):
        provision.provide(load(collection.layout), sys.executable, tmp_path / "envs", source, quiet)
    monkeypatch.undo()
    assert not [p for p in (tmp_path / "envs").iterdir() if p.name.startswith("toy-")]
    env = provision.provide(load(collection.layout), sys.executable, tmp_path / "envs", source, quiet)
    assert env.record["state"] == "created"


def test_an_environment_changed_since_it_was_made_is_made_again(collection, tmp_path):
    toy_stack(collection.layout, tmp_path / "wh", value=7)
    source = FolderSource(tmp_path / "envs" / "store", tmp_path / "wh")
    env = provision.provide(load(collection.layout), sys.executable, tmp_path / "envs", source, quiet)
    target = provision.site_packages(env.path, PYTHON) / "toydep" / "__init__.py"
    target.unlink()
    target.write_text("VALUE = 666\n")
    assert any("changed: " in p for p in env.verify())
    seen = []
    again = provision.provide(load(collection.layout), sys.executable, tmp_path / "envs", source, seen.append)
    assert again.record["state"] == "created" and any("differs from what was made" in m for m in seen)
    assert target.read_text() == "VALUE = 7\n"


def test_a_store_unit_edited_in_place_is_refused_and_made_again(collection, tmp_path):
    wheel_lock = toy_stack(collection.layout, tmp_path / "wh")
    assert wheel_lock.is_file()
    wheel = tmp_path / "wh" / "toydep-1.0-py3-none-any.whl"
    unit = store.add_wheel(tmp_path / "store", wheel, "toydep", "1.0", sha256(wheel))
    path = unit.tree / "toydep" / "__init__.py"
    stat = path.stat()
    path.write_text("VALUE = 9\n")  # same size as "VALUE = 7\n"
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime: only ctime tells
    assert store.find(tmp_path / "store", sha256(wheel)) is None
    assert store.add_wheel(tmp_path / "store", wheel, "toydep", "1.0", sha256(wheel)).tree.joinpath(
        "toydep", "__init__.py").read_text() == "VALUE = 7\n"


def _provide_in_a_process(args):
    root, wh, envs, out = map(Path, args)
    from harness.core.layout import Layout

    env = provision.provide(locks.load(Layout(root), "toy", PYTHON, PLATFORM), sys.executable, envs,
                            FolderSource(envs / "store", wh), lambda m: None)
    out.write_text(json.dumps({"state": env.record["state"], "path": str(env.path)}))


def test_two_runs_provisioning_at_once_build_it_once(collection, tmp_path):
    toy_stack(collection.layout, tmp_path / "wh")
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"out{i}.json" for i in range(3)]
    with ctx.Pool(3) as pool:
        pool.map(_provide_in_a_process, [(collection.layout.root, tmp_path / "wh", tmp_path / "envs", o) for o in outs])
    results = [json.loads(o.read_text()) for o in outs]
    assert sorted(r["state"] for r in results) == ["created", "reused", "reused"]
    assert len({r["path"] for r in results}) == 1


def test_no_disk_space_names_the_folder_and_the_size(collection, tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    source = IndexSource(tmp_path / "envs" / "store")
    monkeypatch.setattr(source, "download_size", lambda pins, lock: 3 * 2**30)
    with pytest.raises(EnvError, match="not enough disk space .* under .*envs.*GiB needed"):
        provision.provide(load(collection.layout), sys.executable, tmp_path / "envs", source, quiet)


# ---------------------------------------------------------------- the runtime decision

def _lock_with_runtime(collection, tmp_path, torch="2.11.0", cuda_runtime="13.0.96", triton="3.6.0"):
    wheels = [(n, v, make_wheel(tmp_path / "rt", n, v, {f"{n.replace('-', '_')}/__init__.py": ""}))
              for n, v in (("torch", torch), ("nvidia-cuda-runtime", cuda_runtime), ("triton", triton),
                           ("toydep", "1.0"))]
    add_stack(collection.layout, "rt", wheels)
    return locks.load(collection.layout, "rt", PYTHON, PLATFORM)


def host(torch="2.11.0+cu130", cuda="13.0", triton="3.6.0"):
    runtime = {"torch": {"version": torch, "location": "/site", "top_level": ["torch"]}}
    if triton:
        runtime["triton"] = {"version": triton, "location": "/site", "top_level": ["triton"]}
    return {"python": PYTHON, "runtime": runtime, "torch_cuda": cuda}


@pytest.mark.parametrize("machine, reused, why", [
    (host(), True, "is the locked build"),
    (host(torch="2.11.0"), True, "is the locked build"),
    (host(torch="2.13.0+cpu", cuda=None), False, "not the locked build"),
    (host(cuda="12.8"), False, "CUDA 12.8"),
    (host(triton="3.5.1"), False, "triton 3.5.1"),
    (host(triton=None), False, "triton (none)"),
    ({"python": PYTHON, "runtime": {}, "torch_cuda": None}, False, "has no torch"),
])
def test_the_runtime_is_reused_only_when_it_is_the_locked_build(collection, tmp_path, machine, reused, why):
    lock = _lock_with_runtime(collection, tmp_path)
    got, reason = provision.runtime_decision(lock, machine)
    assert got is reused and why in reason
    assert lock.cuda == "13.0" and {p.name for p in lock.runtime} == {"torch", "nvidia-cuda-runtime", "triton"}


def test_a_reused_runtime_is_linked_and_recorded(collection, tmp_path):
    lock = _lock_with_runtime(collection, tmp_path)
    site = tmp_path / "hostsite"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("__version__ = '2.11.0+cu130'\n")
    (site / "triton").mkdir()
    (site / "triton" / "__init__.py").write_text("__version__ = '3.6.0'\n")
    machine = {"python": PYTHON, "torch_cuda": "13.0", "runtime": {
        "torch": {"version": "2.11.0+cu130", "location": str(site), "top_level": ["torch"]},
        "triton": {"version": "3.6.0", "location": str(site), "top_level": ["triton"]}}}
    env = provision.provide(lock, sys.executable, tmp_path / "envs", FolderSource(tmp_path / "envs" / "store",
                                                                                  tmp_path / "rt"), quiet, machine)
    runtime = env.record["runtime"]
    assert runtime["mode"] == "reused" and runtime["torch"] == "2.11.0+cu130"
    assert runtime["linked"] == ["torch", "triton"]
    assert runtime["not_installed_here"] == ["nvidia-cuda-runtime"] and env.record["installed"] == ["toydep==1.0"]
    out = subprocess.run([env.python, "-c", "import torch, toydep; print(torch.__version__)"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "2.11.0+cu130"


# ---------------------------------------------------------------- a pack's stages in its stack

REPRO_DEP = REPRO_OK.replace("import widget\n", "import widget, toydep\n").replace(
    '"threshold": 2}', '"threshold": 2, "toydep": toydep.VALUE}')


def test_a_packs_stages_run_in_its_stacks_environment(collection, upstream, opts, tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh", value=11)
    folder = collection.add_pack("01", "toy", upstream.base, repro=REPRO_DEP, extra_requires='stack = "toy"')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "leak"))  # the caller's path never reaches a stage
    result = run(collection, opts, folder, env_dir=tmp_path / "envs",
                 units=FolderSource(tmp_path / "envs" / "store", tmp_path / "wh"))
    assert result.verdict == "CONFIRMED", result.reason
    assert [s.evidence["toydep"] for s in result.stages] == [11, 11]
    assert result.environment["environment"]["stack"] == "toy"
    assert result.stages[0].environment["state"] == "created" and result.stages[1].environment["state"] == "reused"
    log = Path(result.stages[0].log).read_text()
    assert str(tmp_path / "leak") not in log.split("----- output")[0]


def test_an_environments_probe_is_taken_once_and_reused_only_for_the_same_machine(collection, upstream, opts,
                                                                                   tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh", value=11)
    folder = collection.add_pack("01", "toy", upstream.base, repro=REPRO_DEP,
                                 extra_requires='stack = "toy"\npython_deps = ["toydep>=1"]')
    taken = []
    real = pipeline.probe.probe
    monkeypatch.setattr(pipeline.probe, "probe", lambda *a, **k: taken.append(1) or real(*a, **k))
    gpus = {"count": 1, "gpus": [{"name": "GPU A", "capability": "9.0", "driver": "1", "memory": "1 MiB"}]}
    monkeypatch.setattr(pipeline.probe, "gpus", lambda: gpus)

    def once() -> dict:
        monkeypatch.setattr(pipeline, "_MACHINE", {})  # a new run
        result = run(collection, opts, folder, env_dir=tmp_path / "envs",
                     units=FolderSource(tmp_path / "envs" / "store", tmp_path / "wh"))
        assert result.verdict == "CONFIRMED", result.reason
        return result.environment

    first = once()
    assert taken == [1] and first["probe"]["reused"] is False
    assert first["packages"]["toydep"] == "1.0" and "torch" in first["packages"], "the pack's and the usual names"
    second = once()
    assert taken == [1] and second["probe"] == {"taken_at": first["probe"]["taken_at"], "reused": True}
    probed = lambda record: {k: v for k, v in record.items() if k not in ("probe", "environment")}  # noqa: E731
    assert probed(second) == probed(first)
    gpus = {"count": 1, "gpus": [{**gpus["gpus"][0], "driver": "2"}]}  # another driver: probed again
    assert once()["probe"]["reused"] is False and taken == [1, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # other GPUs chosen: probed again
    assert once()["probe"]["reused"] is False and taken == [1, 1, 1]


def test_a_gpu_pack_on_a_machine_without_one_is_skipped_before_provisioning(collection, upstream, opts, tmp_path,
                                                                             monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh")
    folder = collection.add_pack("01", "toy", upstream.base, gpu="true", extra_requires='stack = "toy"')
    monkeypatch.setattr(pipeline.probe, "gpus", lambda: {"error": "nvidia-smi cannot be run"})
    monkeypatch.setattr(pipeline, "_MACHINE", {})
    result = run(collection, opts, folder, env_dir=tmp_path / "envs",
                 units=FolderSource(tmp_path / "envs" / "store", tmp_path / "wh"))
    assert result.verdict == "SKIPPED" and "no NVIDIA GPU here" in result.reason
    assert "missing Python package" not in result.reason and "python runner.py --pack 01" in result.reason
    assert not (tmp_path / "envs").exists(), "nothing may be provisioned to report a skip"
    assert result.patch["status"] == "applied", "sources and the patch are still checked"


def test_lint_checks_that_every_lock_pins_what_the_pack_needs(collection, upstream, tmp_path):
    toy_stack(collection.layout, tmp_path / "wh")
    folder = collection.add_pack("01", "toy", upstream.base,
                                 extra_requires='stack = "toy"\npython_deps = ["toydep>=2"]')
    pack = manifest.load_pack(folder, collection.layout)
    problems = locks.pack_problems(pack, collection.layout)
    assert problems and "pins toydep==1.0, the pack needs toydep>=2" in problems[0]


def test_the_collections_locks_are_current_for_their_requirements():
    from harness.core.layout import Layout

    layout = Layout()
    for stack in locks.available(layout):
        assert locks.stale(layout, stack) == [], stack
        for python in locks.PYTHONS:
            lock = locks.load(layout, stack, python, PLATFORM)
            assert lock.pins, (stack, python)


@pytest.mark.network
def test_the_collections_locks_re_resolve_to_the_same_pins(tmp_path):
    """uv, from the committed lock's own pins, against the configured index: the same pins and hashes."""
    from harness.core.layout import Layout
    from harness.sources import pkgindex

    try:
        locks.uv_command()
    except locks.StackError as exc:
        pytest.skip(str(exc))
    try:
        pkgindex.project_files("packaging")
    except pkgindex.PackageIndexError as exc:
        pytest.skip(f"the package index cannot be reached: {exc}")
    layout = Layout()
    for stack in locks.available(layout):
        committed = locks.load(layout, stack, "3.12", PLATFORM)
        out = locks.generate(layout, stack, "3.12", output=tmp_path / f"{stack}.txt")
        pins, _ = locks.parse(out.read_text(), str(out))
        assert {(p.name, p.version) for p in pins} == {(p.name, p.version) for p in committed.pins}, stack


def test_an_unreadable_or_missing_lock_is_a_skip_with_the_command_that_makes_it(collection, upstream, opts, tmp_path):
    folder = collection.add_pack("01", "toy", upstream.base, extra_requires='stack = "toy"')
    (collection.layout.root / "stacks" / "toy").mkdir(parents=True)
    (collection.layout.root / "stacks" / "toy" / "requirements.in").write_text("toydep==1.0\n")
    result = run(collection, opts, folder, env_dir=tmp_path / "envs")
    assert result.verdict == "SKIPPED" and f"has no lock for Python {PYTHON}" in result.reason
    assert "python -m harness.envs.locks --lock toy" in result.reason
    assert fsutil.read_json(tmp_path / "nothing.json") == {}


def _foreign_wheel(folder: Path, value: int) -> Path:
    """toydep 1.0 built for another CPython (cp39): same name and version, other file, other hash."""
    other = make_wheel(folder / "other", "toydep", "1.0", {"toydep/__init__.py": f"VALUE = {value}\n"})
    return other.rename(folder / "toydep-1.0-cp39-cp39-manylinux_2_17_x86_64.whl")


def test_the_same_version_built_for_another_python_is_never_picked(collection, tmp_path):
    """A lock pins every file of a version; a folder or the unit store may hold the same version for another
    Python (an earlier bundle or environment for it). Provisioning for this Python must take this Python's."""
    mine = make_wheel(tmp_path / "wh", "toydep", "1.0", {"toydep/__init__.py": "VALUE = 7\n"})
    foreign = _foreign_wheel(tmp_path / "wh", 1)
    lock_path = add_stack(collection.layout, "toy", [("toydep", "1.0", mine)])
    lock_path.write_text(lock_path.read_text().replace(
        f"--hash=sha256:{sha256(mine)}", f"--hash=sha256:{sha256(foreign)} \\\n    --hash=sha256:{sha256(mine)}"))
    assert wheels.suits(foreign.name, "3.9", PLATFORM) and not wheels.suits(foreign.name, "3.12", PLATFORM)
    assert wheels.from_folder(load(collection.layout).pins, tmp_path / "wh", PYTHON, PLATFORM)["toydep"] == mine
    store_dir = tmp_path / "envs" / "store"
    store.add_wheel(store_dir, foreign, "toydep", "1.0", sha256(foreign))  # seen first, by its hash
    env = provision.provide(load(collection.layout), sys.executable, tmp_path / "envs",
                            FolderSource(store_dir, tmp_path / "wh"), quiet)
    out = subprocess.run([env.python, "-c", "import toydep; print(toydep.VALUE)"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "7"


def test_a_two_gpu_pack_on_one_gpu_is_skipped_and_runs_with_nvlink_multicast_off(collection, upstream, opts,
                                                                                tmp_path, monkeypatch):
    toy_stack(collection.layout, tmp_path / "wh")
    folder = collection.add_pack("01", "toy", upstream.base, gpu="true", extra_requires='gpus = 2\nstack = "toy"')
    one = {"count": 1, "gpus": [{"name": "H200", "capability": "9.0", "driver": "1", "memory": "1"}]}
    monkeypatch.setattr(pipeline.probe, "gpus", lambda: one)
    monkeypatch.setattr(pipeline, "_MACHINE", {})
    result = run(collection, opts, folder, env_dir=tmp_path / "envs",
                 units=FolderSource(tmp_path / "envs" / "store", tmp_path / "wh"))
    assert result.verdict == "SKIPPED" and "the pack needs 2 GPUs, 1 visible" in result.reason
    pack = manifest.load_pack(folder, collection.layout)
    env = provision.host_env(sys.executable)
    made = pipeline.stage_variables("clean", upstream.path, pack, opts(), tmp_path / "p", tmp_path / "a", env)
    assert {k: made[k] for k in pipeline.MULTI_GPU_DEFAULTS} == pipeline.MULTI_GPU_DEFAULTS


@pytest.mark.parametrize("filename, python, fits", [
    ("nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl", "3.12", True),
    ("a-1-cp312-cp312-manylinux1_x86_64.whl", "3.12", True),
    ("a-1-cp38-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "3.12", True),
    ("a-1-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl", "3.12", False),
    ("a-1-cp312-cp312-manylinux_2_34_x86_64.whl", "3.12", False),  # newer glibc than the platform's
    ("a-1-cp312-cp312-linux_x86_64.whl", "3.12", False),
    ("a-1-cp312-cp312-macosx_11_0_arm64.whl", "3.12", False),
    ("a-1-py3-none-any.whl", "3.13", True),
])
def test_a_wheel_suits_the_python_and_platform_as_pip_decides(filename, python, fits):
    assert wheels.suits(filename, python, PLATFORM) is fits


def test_a_probe_that_cannot_be_kept_is_still_the_record(tmp_path):
    from harness.envs import probe_cache

    (tmp_path / "file").write_text("")  # a folder that cannot be made, as in an image the run may not write
    found = probe_cache.probed(tmp_path / "file" / "probes", "env", "0" * 64, lambda: {"python": "3.12"})
    assert found == {"python": "3.12", "probe": {"taken_at": found["probe"]["taken_at"], "reused": False}}
    failed = probe_cache.probed(tmp_path / "probes", "env", "0" * 64, lambda: {"error": "no torch"})
    assert "error" in failed and not (tmp_path / "probes").exists(), "a failed probe is never kept"
