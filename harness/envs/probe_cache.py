"""The environment probe of a provisioned environment, kept between runs.

The probe imports torch in the stage's interpreter (seconds: CUDA initialisation included), and its
answer is a function of what it reads: the environment's files, the host runtime it links (torch,
triton, CUDA libraries), the GPUs and driver, the variables the stage runs with, the CPU set and the
kernel. A provisioned environment is checked against its manifest before every use, so a probe whose
key covers the rest is reused; the record says when it was taken and that it was reused."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ..core import fsutil
from . import probe

# What the probe reads from the environment variables (CUDA_HOME and PATH find nvcc, the others choose
# the GPUs and the libraries torch loads).
VARIABLES = ("CUDA_HOME", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "PATH")
VOLATILE = ("seconds", "state")  # an environment record's fields that change with every use


def key(env_record: dict, python: str, variables: dict[str, str], gpus: dict, runtime: dict) -> str:
    """sha256 of everything the probe's answer depends on, except the environment's files (checked apart)."""
    material = {
        "environment": {k: v for k, v in env_record.items() if k not in VOLATILE},
        "python": python,
        "variables": {name: variables.get(name) for name in VARIABLES},
        "gpus": gpus,
        "runtime": runtime,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "kernel": os.uname().release,
        "probe": hashlib.sha256(probe.PROBE.read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def probed(folder: Path, name: str, digest: str, look: Callable[[], dict]) -> dict:
    """The probe kept under folder for this key, or a new one (kept when it succeeded)."""
    path = folder / f"{name}-{digest[:20]}.json"
    kept = fsutil.read_json(path)
    if kept.get("key") == digest and isinstance(kept.get("info"), dict) and "error" not in kept["info"]:
        return {**kept["info"], "probe": {"taken_at": kept.get("taken_at"), "reused": True}}
    info = look()
    taken_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if "error" not in info:
        try:
            fsutil.write_json(path, {"key": digest, "taken_at": taken_at, "info": info})
        except OSError:  # an environment folder the run may not write (a container's image): probe each run
            pass
    return {**info, "probe": {"taken_at": taken_at, "reused": False}}
