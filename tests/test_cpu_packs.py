"""The packs that need no GPU (18, a contract on Megatron's argument parsing; 13, a compiler pack whose bug
is at lowering) run for real on a CPU: the runner provisions their stacks' locked environments from the
package index (torch's CUDA wheels run on a CPU) and the verdict must be the expected one. Skipped, with the
reason, where the index or the pack's sources cannot be reached (13's base is git only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.layout import Layout
from harness.envs import locks
from harness.sources import pkgindex

ROOT = Layout().root
pytestmark = [pytest.mark.network,
              pytest.mark.skipif(locks.host_platform() != "linux-x86_64", reason="locks are made for linux x86_64")]


@pytest.mark.parametrize("pack, verdict", [("18", "HELD"), ("13", "CONFIRMED")])
def test_a_cpu_pack_reaches_its_verdict_in_its_locked_environment(pack, verdict, tmp_path):
    try:
        pkgindex.project_files("packaging")
    except pkgindex.PackageIndexError as exc:
        pytest.skip(f"the package index cannot be reached: {exc}")
    work = Path.home() / ".cache" / "upstream-repro-tests" / "cpu"
    check = subprocess.run([sys.executable, str(ROOT / "runner.py"), "--check", "--pack", pack, "--cache-dir",
                            str(work / "cache")], capture_output=True, text=True, timeout=1800)
    if check.returncode != 0:
        pytest.skip(f"pack {pack}'s sources cannot be had here: {check.stdout.strip().splitlines()[-1:]}")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), "--pack", pack, "--cache-dir", str(work / "cache"),
                           "--env-dir", str(work / "envs"), "--run-dir", str(tmp_path / "runs"), "--json", str(out)],
                          capture_output=True, text=True, timeout=3600)
    result = json.loads(out.read_text())["packs"][0]
    assert result["verdict"] == verdict, (result["reason"], proc.stderr[-2000:])
    assert proc.returncode == 0
    from harness.core import manifest

    stacks = locks.pack_stacks(manifest.load_pack(manifest.select([pack])[0]))
    assert [s["environment"]["stack"] for s in result["stages"]] == list(stacks)[:len(result["stages"])]
