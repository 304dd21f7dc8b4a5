"""The reproducer's output protocol: one `EVIDENCE {json}` line, then exactly one verdict sentinel on
its own line, then optional extra sentinels the pack declares.

A stage is trusted only with exit code 0, a well-formed EVIDENCE object (finite numbers only) and
exactly one verdict sentinel after it; anything else is an error, never a guess. A sentinel is a whole
line of stdout, nothing before or after it (lines end at "\\n" alone: other separators, such as \\x1c or
\\u2028, are part of a line)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..core.model import ALL_SENTINELS, CONTRACT_SENTINELS, VERDICT_SENTINELS  # noqa: F401 - re-exported

EVIDENCE_PREFIX = "EVIDENCE "
MAX_EVIDENCE_CHARS = 1_000_000


@dataclass
class Parsed:
    sentinel: str | None = None
    evidence: dict[str, Any] | None = None
    extras: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.sentinel is not None and self.evidence is not None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite(value: Any, path: str = "") -> str | None:
    """The path of the first non-finite float in value (json may also give 1e999 as inf), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "(root)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        bad = _finite(v, f"{path}.{k}" if path else str(k))
        if bad:
            return bad
    return None


def lines_of(stdout: str) -> list[tuple[int, str]]:
    """(line number, line) of a whole stdout text, split the way the streaming reader splits it."""
    return [(i, line.removesuffix("\r")) for i, line in enumerate(stdout.split("\n"))]


def parse(lines: list[tuple[int, str]] | str, allowed_extras: tuple[str, ...] = (),
          verdict_sentinels: tuple[str, ...] = VERDICT_SENTINELS) -> Parsed:
    """`lines`: (line number, text) of stdout (all of it, or the protocol lines the runner kept), or stdout.
    `verdict_sentinels`: the set this pack's plan may print. A sentinel of the other set counts as a
    sentinel and is a problem, so a contract reproducer printing BUG_REPRODUCED is an error, not chatter."""
    if isinstance(lines, str):
        lines = lines_of(lines)
    result = Parsed()
    sentinels: list[tuple[int, str]] = []
    evidence_lines: list[tuple[int, str]] = []
    for number, line in lines:
        if line in ALL_SENTINELS:
            sentinels.append((number, line))
        elif line.startswith(EVIDENCE_PREFIX) or line == "EVIDENCE":
            evidence_lines.append((number, line[len(EVIDENCE_PREFIX):]))
        elif line in allowed_extras:
            result.extras.append(line)

    if len(evidence_lines) != 1:
        result.problems.append(f"expected exactly one EVIDENCE line, found {len(evidence_lines)}")
    else:
        number, payload = evidence_lines[0]
        if len(payload) > MAX_EVIDENCE_CHARS:
            result.problems.append(f"EVIDENCE line is {len(payload)} characters (at most {MAX_EVIDENCE_CHARS})")
        else:
            try:
                value = json.loads(payload, parse_constant=_no_constant)
            except (ValueError, RecursionError) as exc:
                result.problems.append(f"EVIDENCE line is not valid JSON: {str(exc)[:200]}")
            else:
                bad = _finite(value)
                if bad:
                    result.problems.append(f"EVIDENCE holds a non-finite number at '{bad}'")
                elif isinstance(value, dict) and value:
                    result.evidence = value
                else:
                    result.problems.append("EVIDENCE must be a non-empty JSON object")
    if len(sentinels) != 1:
        names = ", ".join(s for _, s in sentinels) or "none"
        result.problems.append(f"expected exactly one verdict sentinel, found {len(sentinels)} ({names})")
    elif sentinels[0][1] not in verdict_sentinels:
        result.problems.append(f"sentinel {sentinels[0][1]} is not one this pack may print "
                               f"({', '.join(map(str, verdict_sentinels))})")
    else:
        result.sentinel = sentinels[0][1]
        if evidence_lines and evidence_lines[0][0] > sentinels[0][0]:
            result.problems.append("the EVIDENCE line must come before the verdict sentinel")
    return result
