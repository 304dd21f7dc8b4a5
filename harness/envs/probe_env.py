"""Environment probe, run with the reproducer's interpreter (it may be another Python than the
runner's). Prints one JSON object: what PyTorch's collect_env and Liger's env_report ask for.
Stdlib only at import time; torch is imported inside a try."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata

DISTS = ("torch", "triton", "tilelang", "transformer-engine", "numpy", "jsonschema")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> dict:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    if out.returncode != 0:
        return {"error": out.stderr.strip()[:200]}
    rows = [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines()]
    return {"gpus": [{"name": r[0], "driver": r[1], "memory": r[2]} for r in rows if len(r) >= 3]}


def probe(extra_dists: list[str]) -> dict:
    info: dict = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": {d: _version(d) for d in (*DISTS, *extra_dists)},
    }
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means "no torch here"
        info["torch"] = {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
        return info
    cuda = {"available": torch.cuda.is_available(), "runtime": torch.version.cuda,
            "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if cuda["available"]:
        props = torch.cuda.get_device_properties(0)
        cuda.update({
            "device_name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
        })
        smi = _nvidia_smi()
        cuda["driver"] = (smi.get("gpus") or [{}])[0].get("driver") or smi.get("error")
    info["torch"] = {"importable": True, "version": torch.__version__, "cuda": cuda}
    return info


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1:])))
