"""Environment probe, run with the reproducers' interpreter (it may be another Python than the runner's).
Prints one JSON object. Stdlib only at import time.

`probe_env.py`: what PyTorch's collect_env and Liger's env_report ask for (torch is imported inside a
try): Python, platform, OS, CPU, nvcc, every installed distribution's version, torch, its CUDA runtime,
NCCL and cuDNN, the GPU.
`probe_env.py --runtime`: without importing anything: the Python version, and every installed torch /
triton / nvidia-* / cuda-* distribution with its version, location and top-level entries (what an
environment links when it reuses this machine's torch), and the CUDA version torch was built for."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

DISTS = ("torch", "triton", "tilelang", "transformer-engine", "numpy", "jsonschema")
RUNTIME_RE = re.compile(r"^(torch|triton|nvidia-.+|cuda-.+)$")


def _every_version() -> dict[str, str]:
    """Every installed distribution's version, by normalised name (one probe serves every pack)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        found.setdefault(normalised(dist.metadata["Name"] or ""), dist.version)
    return found


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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


def _os() -> str | None:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    except OSError:
        return None


def _cpu() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({len(os.sched_getaffinity(0))} cores usable)"
    except OSError:
        pass
    return platform.processor() or None


def _nvcc() -> str | None:
    """The CUDA compiler the kernels' JIT would find (CUDA_HOME, else PATH): its release line."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"] if os.environ.get("CUDA_HOME") else []
    candidates.append(Path("nvcc"))
    for nvcc in candidates:
        try:
            out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        release = [ln for ln in out.stdout.splitlines() if "release" in ln]
        if out.returncode == 0 and release:
            return release[-1].strip()
    return None


def probe() -> dict:
    info: dict = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "os": _os(),
        "cpu": _cpu(),
        "nvcc": _nvcc(),
        "packages": _every_version(),
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
    try:  # what Megatron's and PyTorch's bug forms ask for
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if cuda["available"] else None
        info["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001 - a build without NCCL or cuDNN
        info.setdefault("nccl", None)
        info.setdefault("cudnn", None)
    return info


def _top_level(dist: metadata.Distribution) -> list[str]:
    """First path components a distribution installed into its site folder (its RECORD), dist-info included."""
    tops = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts and parts[0] not in ("..", "/") and not str(f).startswith("/"):
            tops.add(parts[0])
    return sorted(tops)


def runtime() -> dict:
    found = {}
    for dist in metadata.distributions():
        name = normalised(dist.metadata["Name"] or "")
        if not RUNTIME_RE.match(name) or name in found:
            continue
        location = str(Path(str(dist.locate_file(""))).resolve())
        found[name] = {"version": dist.version, "location": location, "top_level": _top_level(dist)}
    torch_cuda = None
    if "torch" in found:
        version_py = Path(found["torch"]["location"]) / "torch" / "version.py"
        try:
            match = re.search(r"^cuda(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", version_py.read_text(), re.MULTILINE)
            torch_cuda = match.group(1) if match else None
        except OSError:
            torch_cuda = None
    return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}", "python_full": sys.version.split()[0],
            "executable": sys.executable, "base_executable": getattr(sys, "_base_executable", sys.executable),
            "runtime": found, "torch_cuda": torch_cuda}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--runtime"]:
        print(json.dumps(runtime()))
    else:
        print(json.dumps(probe()))
