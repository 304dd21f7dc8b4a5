"""Running git: one place for the flags every call needs and for readable failures."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class GitError(Exception):
    def __init__(self, args: list[str], returncode: int, stderr: str):
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {self.stderr}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Never prompt for credentials (a missing repo must fail, not hang) and keep output parseable.
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_ASKPASS": "true"})
    return env


def git(args: list[str], cwd: Path | None = None, check: bool = True, timeout: float = 600,
        env: dict[str, str] | None = None, input: str | None = None) -> str:
    """env: extra variables (GIT_INDEX_FILE, ...); input: the command's stdin."""
    cmd = ["git", "-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main", *args]
    proc = subprocess.run(
        cmd, cwd=cwd, env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout,
        check=False, input=input,
    )
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode, proc.stderr)
    return proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr


def run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Like git() but hands back the whole result, for callers that read stderr on failure."""
    cmd = ["git", "-c", "advice.detachedHead=false", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def commit_tree(directory: Path, message: str) -> str:
    """Put a plain directory under git (one commit) so `git apply` sees upstream's paths."""
    git(["init", "-q"], cwd=directory)
    git(["add", "-A", "-f"], cwd=directory)
    ident = ["-c", "user.name=upstream-repro", "-c", "user.email=upstream-repro@localhost"]
    git([*ident, "commit", "-q", "--no-verify", "--allow-empty", "-m", message], cwd=directory)
    return git(["rev-parse", "HEAD"], cwd=directory).strip()
