"""--docker against a real Docker engine (skipped, with the reason, where there is none): the image of a
CPU pack's stacks is built from a base made from Debian's archive (no registry), its environments are
provisioned at build time from the wheelhouse the runner prepared on the host, and the pack's run inside the
container writes the same table and files as a plain run. The GPU half (a container with GPUs) cannot run on
a machine without one: the request is tested against the SDK's own types in test_container.py.

The image build takes minutes the first time (the torch wheels, about 2.6 GB); later runs reuse the image
of the same inputs and the wheelhouse under the cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.core.layout import Layout

BASE = os.environ.get("REPRO_TEST_DOCKER_BASE", "upstream-repro-base:bookworm-minbase")
BASE_PYTHON = os.environ.get("REPRO_TEST_DOCKER_PYTHON", "3.11")
ROOT = Layout().root


def _engine():
    try:
        import docker  # noqa: PLC0415
    except ImportError:
        pytest.skip("the Docker SDK is not installed (pip install -e '.[docker]')")
    if not hasattr(docker, "from_env"):
        pytest.skip("the Docker SDK is not installed (pip install -e '.[docker]')")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        pytest.skip(f"no Docker engine can be reached here ({type(exc).__name__})")
    return client


def make_base(client) -> None:
    """A Debian bookworm base from Debian's archive (debootstrap + docker import), once."""
    try:
        client.images.get(BASE)
        return
    except Exception:  # noqa: BLE001 - absent
        pass
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        pytest.skip(f"no base image {BASE}, and debootstrap (as root) is not available to make one")
    script = ROOT / "docker" / "make-base.sh"
    subprocess.run(["bash", str(script), BASE], check=True, timeout=3600)


@pytest.fixture(scope="module")
def engine():
    client = _engine()
    make_base(client)
    return client


def _cache_with(pack: str, cache: Path) -> None:
    """The pack's pristine sources on the host (the container has no mirror configuration of its own)."""
    code = cli.main(["--check", "--pack", pack, "--cache-dir", str(cache)])
    if code != cli.EXIT_OK:
        pytest.skip(f"pack {pack}'s sources cannot be had here (a git-only base needs the network or a mirror)")


@pytest.mark.parametrize("pack, verdict", [("18", "HELD"), ("13", "CONFIRMED")])
def test_a_cpu_pack_runs_in_a_real_container(engine, pack, verdict, monkeypatch):
    work = Path.home() / ".cache" / "upstream-repro-tests" / "docker"  # not under /tmp: never a mount target
    cache = work / "cache"
    _cache_with(pack, cache)
    monkeypatch.setenv("REPRO_DOCKER_BASE", BASE)
    monkeypatch.setenv("REPRO_DOCKER_PYTHON", BASE_PYTHON)
    out = work / f"out-{pack}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--pack", pack, "--docker", "--cache-dir", str(cache), "--run-dir", str(out / "runs"),
            "--json", str(out / "r.json"), "--markdown", str(out / "r.md")]
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), *argv], capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "r.json").read_text())["packs"][0]
    assert result["verdict"] == verdict, result["reason"]
    assert all(s["environment"]["provisioned_from"] == "wheelhouse /opt/repro/wheels" for s in result["stages"])
    assert all(s["environment"]["state"] == "reused" for s in result["stages"]), "made at build time"
    assert f"**{verdict}**" in (out / "r.md").read_text()
    assert f"{result['pack']}: {verdict}" in proc.stdout and "upstream-repro verdicts" in proc.stdout
    assert (out / "runs" / result["pack"]).is_dir(), "the run folder is the host's"
