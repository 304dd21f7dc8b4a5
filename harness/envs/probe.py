"""The environment record of a run, and whether it meets a pack's [requires]."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

PROBE = Path(__file__).with_name("probe_env.py")


def probe(python: str, extra_dists: list[str], env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run([python, str(PROBE), *extra_dists], capture_output=True, text=True,
                          timeout=300, env=env, check=False)
    if proc.returncode != 0:
        return {"error": f"probe failed with {python}: {proc.stderr.strip()[-500:]}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"probe printed no JSON: {proc.stdout[-300:]}"}


def unmet_requirements(info: dict, gpu: bool, min_capability: str | None, gpus: int,
                       python_deps: tuple[str, ...]) -> list[str]:
    """Reasons this environment cannot run the pack (empty when it can)."""
    if "error" in info:
        return [info["error"]]
    reasons: list[str] = []
    torch_info = info.get("torch", {})
    if gpu and not torch_info.get("importable"):
        reasons.append(f"torch is not importable ({torch_info.get('error', 'unknown error')}), "
                       "and the pack needs a CUDA GPU through it")
    elif gpu:
        cuda = torch_info.get("cuda", {})
        if not cuda.get("available"):
            reasons.append(f"no CUDA GPU visible to torch {torch_info.get('version')} "
                           f"(CUDA runtime {cuda.get('runtime')})")
        else:
            if min_capability and Version(cuda["capability"]) < Version(min_capability):
                reasons.append(f"GPU {cuda['device_name']} has capability {cuda['capability']}, "
                               f"the pack needs >= {min_capability}")
            if cuda.get("device_count", 0) < gpus:
                reasons.append(f"the pack needs {gpus} GPUs, {cuda.get('device_count')} visible")
    packages = info.get("packages", {})
    for spec in python_deps:
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            reasons.append(f"requirement '{spec}' cannot be parsed")
            continue
        have = packages.get(req.name)
        if have is None:
            reasons.append(f"missing Python package {spec}")
            continue
        try:
            ok = req.specifier.contains(Version(have), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            reasons.append(f"{req.name} {have} is installed, the pack needs {spec}")
    return reasons


def dist_names(python_deps: tuple[str, ...]) -> list[str]:
    names = []
    for spec in python_deps:
        try:
            names.append(Requirement(spec).name)
        except InvalidRequirement:
            continue
    return names
