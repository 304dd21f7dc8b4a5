"""The reproducer's output protocol: one `EVIDENCE {json}` line, then exactly one verdict sentinel
on its own line, then optional extra sentinels the pack declares.

A stage is trusted only with exit code 0, a well-formed EVIDENCE object and exactly one verdict
sentinel after it; anything else is an error, never a guess."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

VERDICT_SENTINELS = ("BUG_REPRODUCED", "FIX_VALIDATED", "INCONCLUSIVE")
# Contract packs (kind parity/perf) say whether a seam's contract held; same trust rules.
CONTRACT_SENTINELS = ("CONTRACT_HELD", "CONTRACT_BROKEN", "INCONCLUSIVE")
_ALL_SENTINELS = tuple(dict.fromkeys(VERDICT_SENTINELS + CONTRACT_SENTINELS))
EVIDENCE_PREFIX = "EVIDENCE "


@dataclass
class Parsed:
    sentinel: str | None = None
    evidence: dict[str, Any] | None = None
    extras: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.sentinel is not None and self.evidence is not None


def parse(stdout: str, allowed_extras: tuple[str, ...] = (),
          verdict_sentinels: tuple[str, ...] = VERDICT_SENTINELS) -> Parsed:
    """`verdict_sentinels`: the set this pack's kind may print (VERDICT_SENTINELS for bug packs,
    CONTRACT_SENTINELS for contract packs). A sentinel of the other set counts as a sentinel and is
    a problem, so a contract reproducer printing BUG_REPRODUCED is an error, not chatter."""
    result = Parsed()
    sentinels: list[tuple[int, str]] = []
    evidence_lines: list[tuple[int, str]] = []
    for number, raw in enumerate(stdout.splitlines()):
        line = raw.strip()
        if line in _ALL_SENTINELS:
            sentinels.append((number, line))
        elif line.startswith(EVIDENCE_PREFIX) or line == "EVIDENCE":
            evidence_lines.append((number, line[len(EVIDENCE_PREFIX):]))
        elif line in allowed_extras:
            result.extras.append(line)

    if len(evidence_lines) != 1:
        result.problems.append(f"expected exactly one EVIDENCE line, found {len(evidence_lines)}")
    else:
        number, payload = evidence_lines[0]
        try:
            value = json.loads(payload)
        except ValueError as exc:
            result.problems.append(f"EVIDENCE line is not valid JSON: {exc}")
        else:
            if isinstance(value, dict) and value:
                result.evidence = value
            else:
                result.problems.append("EVIDENCE must be a non-empty JSON object")
    if len(sentinels) != 1:
        names = ", ".join(s for _, s in sentinels) or "none"
        result.problems.append(f"expected exactly one verdict sentinel, found {len(sentinels)} ({names})")
    elif sentinels[0][1] not in verdict_sentinels:
        result.problems.append(f"sentinel {sentinels[0][1]} is not one this pack may print "
                               f"({', '.join(verdict_sentinels)})")
    else:
        result.sentinel = sentinels[0][1]
        if evidence_lines and evidence_lines[0][0] > sentinels[0][0]:
            result.problems.append("the EVIDENCE line must come before the verdict sentinel")
    return result
