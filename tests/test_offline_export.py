"""--export NN DIR --export-offline: the exported README's second route (a GPU node without network),
followed literally from the folder for a toy pack whose source is a git commit and one whose source is a
release sdist; the runtime check line run against stand-in torch/triton modules; stacks that build from
source are refused in one sentence."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.core import manifest
from harness.core.layout import Layout
from harness.envs import locks
from harness.report import export, offline_export
from harness.sources import pkgindex
from tests.test_sources import index  # noqa: F401 - the loopback package index fixture

REAL = Layout()
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def offline_block(readme: str) -> str:
    section = readme.split("## On a GPU node without network", 1)[1]
    return re.search(r"```bash\n(.*?)\n```", section, re.DOTALL).group(1)


def follow(folder: Path) -> list[str]:
    """Run the route's lines in bash from the folder, as written; the sentinels it printed."""
    script = offline_block((folder / "README.md").read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [ln for ln in done.stdout.splitlines() if ln in ("BUG_REPRODUCED", "FIX_VALIDATED")]


def test_a_git_pack_exported_offline_works_when_followed_literally(collection, upstream, tmp_path):
    collection.add_pack("01", "toy", upstream.base, source='[source]\npaths = ["src"]')
    out = tmp_path / "export"
    assert cli.main(["--export", "01", str(out), "--export-offline", "--cache-dir", str(tmp_path / "c")],
                    layout=collection.layout) == cli.EXIT_OK
    block = offline_block((out / "README.md").read_text())
    assert "git fetch" not in block and "write-tree --prefix=src/" in block, block
    assert follow(out) == ["BUG_REPRODUCED", "FIX_VALIDATED"]


def test_a_tampered_archive_stops_the_route(collection, upstream, tmp_path):
    collection.add_pack("01", "toy", upstream.base, source='[source]\npaths = ["src"]')
    out = tmp_path / "export"
    cli.main(["--export", "01", str(out), "--export-offline", "--cache-dir", str(tmp_path / "c")],
             layout=collection.layout)
    archive = next(out.glob("upstream-*.tar.gz"))
    subprocess.run(["bash", "-c", f"mkdir t && tar -xzf {archive.name} -C t && echo 'VALUE = 9' > "
                    f"t/src/widget/__init__.py && tar -czf {archive.name} -C t src && rm -r t"], cwd=out, check=True)
    script = offline_block((out / "README.md").read_text())
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=out, capture_output=True, text=True)
    assert done.returncode != 0 and "BUG_REPRODUCED" not in done.stdout


def test_a_release_pack_exported_offline_works_when_followed_literally(collection, upstream, index, tmp_path):  # noqa: F811
    sdist = f'sdist = "widget==1.0"\nsdist_sha256 = "{index}"'
    collection.add_pack("01", "toy", upstream.base, sdist=sdist)
    out = tmp_path / "export"
    assert cli.main(["--export", "01", str(out), "--export-offline", "--cache-dir", str(tmp_path / "c")],
                    layout=collection.layout) == cli.EXIT_OK
    assert (out / "widget-1.0.tar.gz").is_file()
    assert f"echo '{index}  widget-1.0.tar.gz' | sha256sum -c" in offline_block((out / "README.md").read_text())
    assert follow(out) == ["BUG_REPRODUCED", "FIX_VALIDATED"]


def _stand_in_runtime(root: Path, torch_version: str, cuda: str, triton_version: str) -> Path:
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "__init__.py").write_text(f"__version__ = {torch_version!r}\nfrom . import version\n")
    (root / "torch" / "version.py").write_text(f"cuda = {cuda!r}\n")
    (root / "triton.py").write_text(f"__version__ = {triton_version!r}\n")
    return root


def test_the_runtime_check_accepts_the_locked_build_only(tmp_path):
    lock = locks.load(REAL, "mamba", "3.12", "linux-x86_64")
    line = offline_export.runtime_check(lock, "3.12").replace("python3.12 ", f"{sys.executable} ", 1)
    torch_pin, triton_pin = lock.pin("torch"), lock.pin("triton")
    good = _stand_in_runtime(tmp_path / "good", f"{torch_pin.version}+cu130", lock.cuda, triton_pin.version)
    bad = _stand_in_runtime(tmp_path / "bad", f"{torch_pin.version}+cu126", "12.6", triton_pin.version)
    for root, ok in ((good, True), (bad, False)):
        done = subprocess.run(["bash", "-c", line], env={**os.environ, "PYTHONPATH": str(root)},
                              capture_output=True, text=True)
        assert (done.returncode == 0) is ok, done.stderr
        assert ok or "take the first route" in done.stderr


def test_the_route_for_a_mamba_pack_installs_the_lock_without_its_runtime():
    pack = manifest.load_pack(manifest.select(["05"], REAL)[0], REAL)
    lock = locks.load(REAL, pack.stack, "3.12", "linux-x86_64")
    checkout = offline_export.Checkout("upstream", "x.tar.gz", ("mkdir upstream",))
    lines = offline_export.steps(pack, {}, [checkout], [lock], "3.12")
    assert lines[1].startswith("python3.12 -c ")
    assert lines[2].endswith(f"--target site -r {offline_export.without_runtime_name('mamba', '3.12')}")
    assert lines[3].startswith("PYTHONPATH=skip-init:upstream:site python3.12 repro.py") and "apply" in lines[4]


def test_a_stack_built_from_source_is_refused_in_one_sentence(tmp_path, capsys):
    code = cli.main(["--export", "03", str(tmp_path / "x"), "--export-offline", "--python", "3.12"], layout=REAL)
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and "builds a distribution from source" in err and "Traceback" not in err


@pytest.mark.network
@pytest.mark.skipif(locks.host_platform() != "linux-x86_64", reason="locks are made for linux x86_64")
@pytest.mark.parametrize("pack_id", ["09", "05"])
def test_a_real_offline_export_is_followed_literally_but_its_gpu_lines(pack_id, tmp_path):
    """Liger (09) and mamba (05), exported for this Python from the index: every line runs as written (sha256,
    unpack, git, the offline hash-checked pip install), except the runtime check and the reproducer runs
    (no torch or GPU here), which are checked for what they would run: the patch still applies, and the
    package resolves to the unpacked checkout through the route's PYTHONPATH."""
    try:
        pkgindex.project_files("packaging")
    except pkgindex.PackageIndexError as exc:
        pytest.skip(f"the package index cannot be reached: {exc}")
    pack = manifest.load_pack(manifest.select([pack_id], REAL)[0], REAL)
    out = tmp_path / "x"
    cache = Path.home() / ".cache" / "upstream-repro-tests" / "export"
    export.export(pack, out, REAL, (PY, "linux-x86_64", cache))
    lines = offline_block((out / "README.md").read_text()).splitlines()
    runs = [ln for ln in lines if "repro.py" in ln]
    assert len(runs) == 2 and all(ln.split()[1] == f"python{PY}" for ln in runs), runs
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    for line in lines:
        if line.startswith(f"python{PY} -c ") or "repro.py" in line:
            continue  # needs torch and a GPU
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=out, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"{line}: {done.stderr[-1500:]}"
    assert (out / "site" / "numpy").is_dir()
    path = runs[0].split()[0].removeprefix("PYTHONPATH=")
    probe = f"import importlib.util as u; print(u.find_spec({pack.package!r}).submodule_search_locations[0])"
    done = subprocess.run([sys.executable, "-c", probe], cwd=out, env={**env, "PYTHONPATH": path},
                          capture_output=True, text=True)
    assert done.returncode == 0 and str(out / "upstream") in done.stdout, done.stderr[-1500:]
