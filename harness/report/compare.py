"""--compare PREV.json: the nightly's question, did any pack change state since last time? Moving
between the two healthy states one way (CONFIRMED -> FIXED_UPSTREAM: upstream fixed it) is news,
not a failure; every other change is. For a contract pack, BROKEN -> HELD (upstream repaired the seam)
is news; HELD -> BROKEN is the alarm."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.model import PackResult, Verdict

ALLOWED = {(Verdict.CONFIRMED, Verdict.FIXED_UPSTREAM), (Verdict.PATCH_CONFLICT, Verdict.FIXED_UPSTREAM),
           (Verdict.BROKEN, Verdict.HELD)}  # a contract pack: upstream repaired the seam


class CompareError(ValueError):
    """The earlier report cannot be read as one."""


def previous_verdicts(path: Path, flag: str = "--compare") -> dict[tuple[str, str | None], str]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        packs = doc["packs"]
        return {(p["pack"], p.get("upstream_ref")): p["verdict"] for p in packs}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CompareError(f"{flag} {path}: not a readable --json report of a run ({type(exc).__name__}: "
                           f"{str(exc)[:120]})") from exc


def changes(previous: dict[tuple[str, str | None], str], results: list[PackResult]) -> tuple[list[str], list[str]]:
    """(unexpected changes, expected ones), as sentences."""
    bad, news = [], []
    for r in results:
        before = previous.get((r.pack, r.upstream_ref))
        if before is None or before == r.verdict:
            continue
        line = f"{r.pack} @ {r.ref}: {before} -> {r.verdict}"
        (news if (before, r.verdict) in ALLOWED else bad).append(line)
    return bad, news
