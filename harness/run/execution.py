"""Running one stage of a reproducer: a subprocess leading its own process group, its output streamed to the log as
it comes (bytes, nothing lost on a timeout or an interrupt), only a bounded tail and the protocol lines
kept in memory, a heartbeat while it runs, and a wall time bounded by the timeout plus a few seconds
whatever its children do.

Children that leave the process group (`setsid`) are found by a token in their environment
(REPRO_STAGE_TOKEN, inherited by every descendant that does not clear it) and killed with the group, on a
timeout, on an interrupt, and when the reproducer exits leaving them behind."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.model import ALL_SENTINELS
from ..core.procs import STOP  # set by the command line's signal handlers

TAIL_BYTES = 64 * 1024  # of each stream, for error messages
MAX_PROTOCOL_LINES = 1000  # EVIDENCE and sentinel lines kept (more than one of each is already an error)
MAX_LINE_BYTES = 4 * 1024 * 1024  # a longer line is cut (an EVIDENCE line that long is refused)
HEARTBEAT_S = 15.0
POLL_S = 0.05  # how often the stage is looked at: its end is seen within this
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this
DRAIN_S = 2.0  # how long the pipes may stay open after the process is gone
TOKEN_VAR = "REPRO_STAGE_TOKEN"

Heartbeat = Callable[[float, str], None]  # (elapsed seconds, the last output line)


@dataclass
class Completed:
    exit_code: int | None  # None when killed (timeout or interrupt)
    timed_out: bool
    duration_s: float
    protocol: list[tuple[int, str]]  # (stdout line number, line) of EVIDENCE / sentinel / extra lines
    stdout_tail: str
    stderr_tail: str
    log: Path
    interrupted: bool = False
    killed_leftovers: int = 0  # descendants still running after the reproducer exited, killed
    notes: list[str] = field(default_factory=list)
    token: str = ""  # the REPRO_STAGE_TOKEN its processes carried

    @property
    def last_stderr_line(self) -> str:
        return (self.stderr_tail.strip().splitlines() or ["(no stderr)"])[-1]


class _Reader(threading.Thread):
    """Copies one pipe to the log as it comes; keeps a tail and (stdout) the protocol lines."""

    def __init__(self, pipe, log, lock: threading.Lock, protocol: list | None, words: frozenset[str],
                 last: list[str]):
        super().__init__(daemon=True)
        self.pipe, self.log, self.lock, self.protocol, self.words, self.last = pipe, log, lock, protocol, words, last
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.lines = 0
        self.partial = b""

    def run(self) -> None:
        try:
            while chunk := self.pipe.read1(65536) if hasattr(self.pipe, "read1") else self.pipe.read(65536):
                with self.lock:
                    self.log.write(chunk)
                self._keep(chunk)
                self._scan(chunk)
        except (OSError, ValueError):
            pass  # the pipe was closed under us: the process tree is gone or was killed
        if self.partial:
            self._line(self.partial)

    def _keep(self, chunk: bytes) -> None:
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size > TAIL_BYTES and len(self.tail) > 1:
            self.tail_size -= len(self.tail.popleft())

    def _scan(self, chunk: bytes) -> None:
        data = self.partial + chunk
        *lines, self.partial = data.split(b"\n")
        if len(self.partial) > MAX_LINE_BYTES:
            self._line(self.partial[:MAX_LINE_BYTES] + b" [cut]")
            self.partial = b""
        for raw in lines:
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").removesuffix("\r")
        if text.strip():
            self.last[0] = text
        if self.protocol is not None and len(self.protocol) < MAX_PROTOCOL_LINES and (
                text.startswith("EVIDENCE") or text in self.words):
            self.protocol.append((self.lines, text))
        self.lines += 1

    def tail_text(self) -> str:
        return b"".join(self.tail)[-TAIL_BYTES:].decode("utf-8", "replace")


def run_command(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float, log: Path, header: str = "",
                extra_words: tuple[str, ...] = (), heartbeat: Heartbeat | None = None) -> Completed:
    log.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    env = {**env, TOKEN_VAR: token}
    start = time.monotonic()
    lock = threading.Lock()
    protocol: list[tuple[int, str]] = []
    last = [""]
    words = frozenset(map(str, (*ALL_SENTINELS, *extra_words)))
    with open(log, "wb") as fh:
        fh.write(header.encode("utf-8", "replace"))
        fh.write(f"$ {' '.join(cmd)}\n# cwd: {cwd}\n----- output (stdout and stderr as they came) -----\n".encode())
        fh.flush()
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            fh.write(f"\n# could not start: {exc}\n".encode())
            return Completed(None, False, 0.0, [], "", f"could not start {cmd[0]}: {exc}", log,
                             notes=[f"could not start {cmd[0]}: {exc}"])
        out = _Reader(proc.stdout, fh, lock, protocol, words, last)
        err = _Reader(proc.stderr, fh, lock, None, words, last)
        out.start()
        err.start()
        timed_out = interrupted = False
        next_beat = start + HEARTBEAT_S
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if now - start > timeout_s:
                    timed_out = True
                    break
                if STOP.is_set():
                    interrupted = True
                    break
                if heartbeat and now >= next_beat:
                    heartbeat(now - start, last[0])
                    next_beat = now + HEARTBEAT_S
                time.sleep(POLL_S)
        except BaseException:
            _kill_tree(proc, token)
            raise
        if timed_out or interrupted:
            _kill_tree(proc, token)
        exit_code = None if (timed_out or interrupted) else proc.returncode
        # The pipes close when every process holding them is gone; a descendant that left the session
        # keeps them open: wait briefly, then kill what still carries the token and stop reading.
        out.join(DRAIN_S)
        err.join(DRAIN_S)
        leftovers = kill_token(token)
        for pipe in (proc.stdout, proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        out.join(DRAIN_S)
        err.join(DRAIN_S)
        duration = time.monotonic() - start
        notes = []
        if leftovers:
            notes.append(f"{leftovers} process(es) the reproducer left running were killed")
        with lock:
            fh.write(f"\n----- end -----\n# exit: {exit_code} timed_out: {timed_out} interrupted: {interrupted} "
                     f"duration: {duration:.1f}s{'; ' + '; '.join(notes) if notes else ''}\n".encode())
    return Completed(exit_code, timed_out, duration, protocol, out.tail_text(), err.tail_text(), log, interrupted,
                     leftovers, notes, token)


def _kill_tree(proc: subprocess.Popen, token: str) -> None:
    """SIGTERM to the process group and every process carrying the token, SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        kill_token(token, sig)
        try:
            proc.wait(timeout=KILL_GRACE_S if sig == signal.SIGTERM else 10)
            if sig == signal.SIGTERM and not _token_pids(token):
                return
        except subprocess.TimeoutExpired:
            continue


def _token_pids(token: str) -> list[int]:
    """Processes whose environment carries REPRO_STAGE_TOKEN=token (Linux /proc; empty elsewhere)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    me = os.getpid()
    for name in entries:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def kill_token(token: str, sig: int = signal.SIGKILL) -> int:
    """Send sig to every process carrying the token; how many there were."""
    pids = _token_pids(token)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return len(pids)
