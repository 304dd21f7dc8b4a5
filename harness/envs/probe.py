"""What a machine offers, and whether it meets a pack's [requires].

Two looks: a cheap one before anything is provisioned (the GPUs the driver reports through nvidia-smi,
falling back to the host interpreter's torch where there is no nvidia-smi), so a machine without a GPU
does not download CUDA wheels to report SKIPPED; and the full record of the environment a stage runs in
(probe_env.py, with that environment's interpreter), which results and receipts keep."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from . import probe_env

PROBE = Path(__file__).with_name("probe_env.py")


def _run_probe(python: str, args: list[str], env: dict[str, str] | None) -> dict:
    try:
        proc = subprocess.run([python, str(PROBE), *args], capture_output=True, text=True, errors="replace",
                              timeout=300, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"the interpreter {python} does not run: {exc}"}
    if proc.returncode != 0:
        return {"error": f"probe failed with {python}: {proc.stderr.strip()[-500:]}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"probe printed no JSON: {proc.stdout[-300:]}"}


def probe(python: str, env: dict[str, str] | None = None) -> dict:
    """The full record, with `python` and `env` exactly as a stage will run them, and every installed
    distribution's version: one probe serves every pack of an environment (for_pack keeps a pack's)."""
    return _run_probe(python, [], env)


def for_pack(info: dict, dists: list[str]) -> dict:
    """The record a pack keeps: the probe with the versions of the usual distributions and the pack's own
    only, None where one is not installed."""
    if "error" in info:
        return dict(info)
    every = info.get("packages", {})
    return {**info, "packages": {d: every.get(probe_env.normalised(d)) for d in (*probe_env.DISTS, *dists)}}


def runtime(python: str) -> dict:
    """The host interpreter's Python version and its torch / triton / CUDA-library distributions (no import)."""
    return _run_probe(python, ["--runtime"], None)


def gpus() -> dict:
    """{"count", "gpus": [{"name", "capability", "driver", "memory"}]} from nvidia-smi, or {"error"}."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"nvidia-smi cannot be run ({exc})"}
    if out.returncode != 0:
        return {"error": f"nvidia-smi failed: {out.stderr.strip()[:200]}"}
    rows = [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]
    found = [{"name": r[0], "capability": r[1], "driver": r[2], "memory": r[3]} for r in rows if len(r) >= 4]
    return {"count": len(found), "gpus": found}


def gpu_unmet(host: dict, gpu: bool, min_capability: str | None, count: int) -> list[str]:
    """The cheap look: reasons this machine's GPUs cannot run the pack, from nvidia-smi (`host`)."""
    if not gpu:
        return []
    if "error" in host or not host.get("count"):
        why = host.get("error") or "nvidia-smi lists no GPU"
        cap = f" with capability >= {min_capability}" if min_capability else ""
        return [f"no NVIDIA GPU here ({why}); the pack needs a CUDA GPU{cap}"]
    reasons = []
    first = host["gpus"][0]
    try:
        if min_capability and Version(first["capability"]) < Version(min_capability):
            reasons.append(f"GPU {first['name']} has capability {first['capability']}, "
                           f"the pack needs >= {min_capability}")
    except InvalidVersion:
        pass
    if host["count"] < count:
        reasons.append(f"the pack needs {count} GPUs, {host['count']} visible")
    return reasons


def unmet_requirements(info: dict, gpu: bool, min_capability: str | None, gpus: int,
                       python_deps: tuple[str, ...]) -> list[str]:
    """Reasons this environment (the full record) cannot run the pack (empty when it can)."""
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
