"""Processes the runner starts (standard library only): the event that stops them all on SIGINT/SIGTERM, and
helper commands (git, pip, uv) started with setsid (a process group of their own) and killed with their
children when the caller is interrupted or unwound."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

# Set by the command line's signal handlers: every running stage and helper command stops, its children with it.
STOP = threading.Event()


def run_captured(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """subprocess.run for helper commands (git, pip, uv): started with setsid, killed with its children on a
    timeout, on an interrupt, or when the caller is unwound by an exception."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                out, err = proc.communicate(input=input, timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                input = None  # already written
                if STOP.is_set():
                    raise KeyboardInterrupt(f"interrupted while running {cmd[0]}") from None
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(cmd, timeout) from None
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
