"""Running one stage of a reproducer: a subprocess with a prepared environment, a timeout that
kills the whole process group, and stdout/stderr kept in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Completed:
    exit_code: int | None  # None when killed by the timeout
    timed_out: bool
    duration_s: float
    stdout: str
    stderr: str
    log: Path


def run_command(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float, log: Path,
                header: str = "") -> Completed:
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, so a timeout kills compilers it spawned too
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        stdout, stderr = proc.communicate()
    duration = time.monotonic() - start
    exit_code = None if timed_out else proc.returncode
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(header)
        fh.write(f"$ {' '.join(cmd)}\n# cwd: {cwd}\n# exit: {exit_code} timed_out: {timed_out} "
                 f"duration: {duration:.1f}s\n")
        fh.write("----- stdout -----\n" + stdout + "\n----- stderr -----\n" + stderr)
    return Completed(exit_code, timed_out, duration, stdout, stderr, log)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
