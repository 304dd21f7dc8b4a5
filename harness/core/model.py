"""What a run yields, and the words it uses: verdicts, sentinels, patch states, the record of one stage
and of one pack at one upstream ref. Every other module spells these through here (stdlib only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class _Word(str, Enum):
    """A constant that is also its own string: it compares, formats and serializes as its value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Verdict(_Word):
    CONFIRMED = "CONFIRMED"  # the bug reproduces at this ref and the patch fixes it
    FIXED_UPSTREAM = "FIXED_UPSTREAM"  # the bug's signature is gone on the clean upstream code
    PATCH_CONFLICT = "PATCH_CONFLICT"  # the bug is live and the patch does not apply
    FIX_FAILED = "FIX_FAILED"  # the bug is live and the patched stage did not validate the fix
    INCONCLUSIVE = "INCONCLUSIVE"  # the clean stage measured, without a conclusion
    ERROR = "ERROR"  # no trusted sentinel: a crash, a malformed protocol, a fault of the run
    TIMEOUT = "TIMEOUT"
    SKIPPED = "SKIPPED"  # a requirement this machine cannot meet
    FLAKY = "FLAKY"  # --repeat: the runs disagree
    CHECKED = "CHECKED"  # --check: sources fetched, the patch applies
    ALREADY_APPLIED = "ALREADY_APPLIED"  # --check: the patch is already upstream
    HELD = "HELD"  # a contract pack: the seam's contract holds
    BROKEN = "BROKEN"  # a contract pack: it does not


class Sentinel(_Word):
    BUG_REPRODUCED = "BUG_REPRODUCED"
    FIX_VALIDATED = "FIX_VALIDATED"
    INCONCLUSIVE = "INCONCLUSIVE"
    CONTRACT_HELD = "CONTRACT_HELD"
    CONTRACT_BROKEN = "CONTRACT_BROKEN"


# What a bug pack's reproducer may print, and what a contract pack's may print (same trust rules).
VERDICT_SENTINELS = (Sentinel.BUG_REPRODUCED, Sentinel.FIX_VALIDATED, Sentinel.INCONCLUSIVE)
CONTRACT_SENTINELS = (Sentinel.CONTRACT_HELD, Sentinel.CONTRACT_BROKEN, Sentinel.INCONCLUSIVE)
ALL_SENTINELS = tuple(dict.fromkeys(VERDICT_SENTINELS + CONTRACT_SENTINELS))


class PatchStatus(_Word):
    APPLIED = "applied"
    APPLIES = "applies"  # --check found it would apply
    CONFLICT = "conflict"
    ALREADY_APPLIED = "already_applied"
    INVALID = "invalid"  # not a patch that may be applied (garbage, paths outside the tree, links)
    NO_PATCH = "no_patch"


@dataclass(frozen=True)
class StageOutcome:
    """What one stage came to: a trusted sentinel, or why there is none."""

    sentinel: str | None  # only when trusted
    timed_out: bool = False
    error: str | None = None  # crash, bad exit code, malformed protocol


@dataclass
class StageRecord:
    name: str
    sentinel: str | None
    extra_sentinels: list[str]
    evidence: dict[str, Any] | None
    exit_code: int | None
    timed_out: bool
    duration_s: float
    error: str | None
    log: str
    compile_caches: dict[str, str] | None = None  # kernel-compiler caches before this stage: cold or warm
    environment: dict[str, Any] | None = None  # the pinned environment this stage ran in (envs.provision)

    def outcome(self) -> StageOutcome:
        return StageOutcome(self.sentinel, self.timed_out, self.error)


@dataclass
class PackResult:
    pack: str
    id: str
    title: str
    repo: str
    ref: str
    upstream_ref: str | None
    commit: str | None
    verdict: str
    reason: str
    expected: list[str]
    as_expected: bool
    source: dict[str, Any] | None = None
    companions: list[dict[str, Any]] | None = None  # other upstream sources imported, unpatched (pack.toml)
    patch: dict[str, Any] | None = None
    stages: list[StageRecord] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    started_at: str = ""
    log_dir: str = ""
    bundle: dict[str, Any] | None = None
    repeat: dict[str, Any] | None = None  # --repeat N: the runs' verdicts and any differences
    jobs: int = 1  # how many packs shared the machine with this one's run (1: it ran alone)
    upstream_tests: dict[str, Any] | None = None  # --upstream-tests: upstream's tests on the clean and patched trees

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def where(self) -> str:
        """'ref @ commit' (or the release, for an sdist)."""
        return f"{self.ref} @ {(self.commit or '')[:12] or (self.source or {}).get('sdist') or '?'}"
