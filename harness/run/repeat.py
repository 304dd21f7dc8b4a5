"""--repeat N: run a pack N times; differing verdicts, sentinels or evidence make it FLAKY, never a
guess (Defects4J asks for a clean 5x pass before a bug counts as reproducible)."""

from __future__ import annotations

import re
from dataclasses import replace

from ..core.evidence import flatten
from ..core.model import PackResult, Verdict

# Measured times vary run to run by nature; they are not compared.
_TIMING = re.compile(r"(ms|_s$|time|timing|perf|tflops|date|path|log|saved|compared_to)", re.IGNORECASE)


def evidence_differences(a: dict | None, b: dict | None, rtol: float) -> list[str]:
    """Numeric leaves differing by more than rtol (relative to the larger), other leaves not equal."""
    fa, fb = flatten(a or {}), flatten(b or {})
    out = []
    for key in sorted(set(fa) | set(fb)):
        if _TIMING.search(key):
            continue
        x, y = fa.get(key), fb.get(key)
        numeric = isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool)
        if numeric:
            if abs(x - y) > rtol * max(abs(x), abs(y), 1e-12):
                out.append(f"{key}: {x} vs {y}")
        elif x != y:
            out.append(f"{key}: {x!r} vs {y!r}")
    return out


def combine(runs: list[PackResult], rtol: float) -> PackResult:
    first = runs[0]
    problems = []
    for i, other in enumerate(runs[1:], start=2):
        if other.verdict != first.verdict:
            problems.append(f"run {i}: verdict {other.verdict} vs {first.verdict}")
        a = {s.name: s for s in first.stages}
        for stage in other.stages:
            mine = a.get(stage.name)
            if mine is None or mine.sentinel != stage.sentinel:
                problems.append(f"run {i}: {stage.name} sentinel {stage.sentinel} vs {mine.sentinel if mine else None}")
            elif diffs := evidence_differences(mine.evidence, stage.evidence, rtol):
                problems.append(f"run {i}: {stage.name} evidence beyond rtol {rtol}: {'; '.join(diffs[:3])}")
    record = {"n": len(runs), "verdicts": [r.verdict for r in runs], "rtol": rtol, "differences": problems,
              "total_s": [r.durations.get("total_s") for r in runs]}
    if not problems:
        return replace(first, repeat=record)
    return replace(first, verdict=Verdict.FLAKY, reason="runs disagree: " + "; ".join(problems[:3]),
                   as_expected=False, repeat=record)
