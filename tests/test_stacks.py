"""stacks/: every pack names a stack, every stack's locks are well-formed, current, and hold what its packs
need at the versions the receipts were measured with; naming a stack keeps receipts current."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from harness.checks import lint
from harness.core import manifest
from harness.core.layout import Layout
from harness.envs import locks
from harness.report import receipts

LAYOUT = Layout()
STACKS = locks.available(LAYOUT)
PACKS = [manifest.load_pack(f, LAYOUT) for f in manifest.discover(LAYOUT)]


def test_the_stacks_exist():
    assert {"mamba", "megatron", "torch", "tilelang-0.1.8", "tilelang-0.1.12", "runner"} <= set(STACKS)


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("python", locks.PYTHONS)
def test_every_lock_pins_its_requirements_in_range(stack, python):
    lock = locks.load(LAYOUT, stack, python, "linux-x86_64")
    pins = {p.name: p.version for p in lock.pins}
    text = (locks.stack_dir(stack, LAYOUT) / "requirements.in").read_text()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"python_version": python, "python_full_version": f"{python}.0",
                                                   "sys_platform": "linux", "platform_machine": "x86_64"}):
            continue
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), (stack, python, line)
    assert all(len(p.hashes) >= 1 for p in lock.pins)


def test_the_stacks_use_the_receipts_versions():
    """torch 2.11.0 for CUDA 13.0, triton 3.6.0, numpy 2.5.2 and tilelang 0.1.8 at Python 3.12, as in evidence/."""
    for stack in ("mamba", "megatron", "torch"):
        lock = locks.load(LAYOUT, stack, "3.12", "linux-x86_64")
        assert (lock.pin("torch").version, lock.pin("triton").version, lock.cuda) == ("2.11.0", "3.6.0", "13.0")
        assert lock.pin("numpy").version == "2.5.2"
    for stack in ("mamba", "megatron", "tilelang-0.1.8"):
        assert locks.load(LAYOUT, stack, "3.12", "linux-x86_64").pin("tilelang").version == "0.1.8"
    assert locks.load(LAYOUT, "tilelang-0.1.12", "3.12", "linux-x86_64").pin("tilelang").version == "0.1.12"


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: p.name)
def test_every_pack_names_a_stack_that_holds_what_it_needs(pack):
    assert pack.stack in STACKS
    assert locks.pack_problems(pack, LAYOUT) == []
    if pack.compiler is not None:
        assert pack.compiler.fixed_stack in STACKS


def test_lint_names_a_missing_or_unlocked_stack(collection, upstream):
    collection.add_pack("07", "toy", upstream.base, extra_requires='stack = "nosuch"')
    (collection.layout.root / "stacks").mkdir()
    problems = lint.lint(collection.layout)
    assert any("stack 'nosuch' does not exist" in p for p in problems), problems
    collection.add_pack("08", "other", upstream.base)
    assert any("08-other: no [requires].stack" in p for p in lint.lint(collection.layout))


def test_stack_name_must_be_a_folder_name(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base, extra_requires='stack = "../etc"')
    with pytest.raises(manifest.ManifestError, match=r"requires\.stack"):
        manifest.load_pack(folder, collection.layout)


def test_naming_a_stack_does_not_make_receipts_stale(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base)
    path = folder / "pack.toml"
    before = receipts.manifest_digest(path)
    text = path.read_text()
    path.write_text(text.replace("gpu = false\n", 'gpu = false\nstack = "mamba"  # how to run it\n'))
    assert manifest.load_pack(folder, collection.layout).stack == "mamba"
    assert receipts.manifest_digest(path) == before
    # ... but the rest of [requires] is part of what was measured
    path.write_text(text.replace("gpu = false\n", 'gpu = false\nmin_capability = "9.0"\n'))
    assert receipts.manifest_digest(path) != before
    # a `stack` key in another table is not excluded
    path.write_text(text.replace("[claim]\n", '[claim]\nstack = "x"\n'))
    assert receipts.manifest_digest(path) != before


def test_a_compiler_packs_fixed_stack_is_left_out_of_the_digest_too(collection, upstream):
    folder = collection.add_pack("07", "toy", upstream.base, patch=None)
    path = folder / "pack.toml"
    table = ('\n[compiler]\npackage = "w"\nfixed_release = "v2"\nfix_commit = "abcdef0"\nbase_wheels = ["w==1"]\n'
             'fixed_wheels = ["w==2"]\n')
    path.write_text(path.read_text() + table)
    before = receipts.manifest_digest(path)
    path.write_text(path.read_text() + 'fixed_stack = "w-2"\n')
    assert receipts.manifest_digest(path) == before


def test_the_te_stack_pins_the_core_and_builds_the_extension_of_the_same_version():
    """megatron-te: TE's core wheel and meta-package at 2.20.2, the extension (sdist only) in builds.toml at
    the same version (TE refuses to load mismatched parts), its runtime requirements locked, and neither
    nvidia-cutlass-dsl (overridden away) nor a runtime pin for nvidia-cudnn-frontend (it is installed)."""
    for python in locks.PYTHONS:
        lock = locks.load(LAYOUT, "megatron-te", python, "linux-x86_64")
        assert lock.pin("transformer-engine-cu13").version == lock.pin("transformer-engine").version == "2.20.2"
        (build,) = lock.builds
        assert (build.name, build.version) == ("transformer-engine-torch", "2.20.2")
        for name in ("einops", "onnx", "onnxscript", "pydantic", "nvdlfw-inspect", "nvidia-cudnn-frontend", "pip",
                     "setuptools", "wheel"):
            assert lock.pin(name) is not None, (python, name)
        assert lock.pin("nvidia-cutlass-dsl") is None
        assert lock.pin("nvidia-cudnn-frontend") not in lock.runtime
        assert lock.pin("apache-tvm-ffi").version == locks.load(LAYOUT, "megatron", python, "linux-x86_64").pin(
            "apache-tvm-ffi").version
