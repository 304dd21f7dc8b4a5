"""One verdict per pack per upstream ref, from what each stage measured (DESIGN.md's table)."""

from __future__ import annotations

from dataclasses import dataclass

CONFIRMED = "CONFIRMED"
FIXED_UPSTREAM = "FIXED_UPSTREAM"
PATCH_CONFLICT = "PATCH_CONFLICT"
FIX_FAILED = "FIX_FAILED"
ERROR = "ERROR"
TIMEOUT = "TIMEOUT"
SKIPPED = "SKIPPED"
FLAKY = "FLAKY"  # --repeat: the runs disagree
# The clean stage measured and said INCONCLUSIVE: neither the bug nor its absence was shown.
INCONCLUSIVE = "INCONCLUSIVE"
# --check (no reproducer run): the sources were had and the patch applies
CHECKED = "CHECKED"
ALREADY_APPLIED = "ALREADY_APPLIED"
# Contract packs (kind parity/perf: no patch, one stage): the seam's contract held, or it did not.
HELD = "HELD"
BROKEN = "BROKEN"

ALL = (CONFIRMED, FIXED_UPSTREAM, PATCH_CONFLICT, FIX_FAILED, ERROR, TIMEOUT, SKIPPED, FLAKY, CHECKED,
       ALREADY_APPLIED, HELD, BROKEN, INCONCLUSIVE)


@dataclass(frozen=True)
class StageOutcome:
    """What one stage came to: a trusted sentinel, or why there is none."""

    sentinel: str | None  # BUG_REPRODUCED | FIX_VALIDATED | INCONCLUSIVE, only when trusted
    timed_out: bool = False
    error: str | None = None  # crash, bad exit code, malformed protocol


def classify(clean: StageOutcome, patch_status: str, patched: StageOutcome | None,
             second: str = "the patched stage") -> tuple[str, str]:
    """(verdict, one-sentence reason). `second` names the second stage in reasons (a compiler pack's runs
    the fixed release, not a patch)."""
    if clean.timed_out:
        return TIMEOUT, "the clean stage ran past its timeout"
    if clean.sentinel is None:
        return ERROR, f"the clean stage gave no trusted sentinel: {clean.error}"
    if clean.sentinel == "INCONCLUSIVE":
        after = f"; {second} said {patched.sentinel or patched.error}" if patched else ""
        return INCONCLUSIVE, f"the clean stage measured no conclusive effect (see its EVIDENCE){after}"
    if clean.sentinel == "FIX_VALIDATED":
        return FIXED_UPSTREAM, "the bug's signature is gone on the clean upstream code"
    # clean stage: BUG_REPRODUCED
    if patch_status == "conflict":
        return PATCH_CONFLICT, "the bug is live and the patch does not apply (needs a rebase)"
    if patch_status == "already_applied":
        return FIX_FAILED, "the patch is already applied upstream, yet the bug reproduces"
    if patched is None:
        return FIX_FAILED, f"{second} did not run"
    if patched.timed_out:
        return FIX_FAILED, f"the bug is live; {second} ran past its timeout"
    if patched.sentinel == "FIX_VALIDATED":
        return CONFIRMED, "the bug reproduces at this ref and the patch fixes it"
    if patched.sentinel is None:
        return FIX_FAILED, f"the bug is live; {second} gave no trusted sentinel: {patched.error}"
    return FIX_FAILED, f"the bug is live; {second} said {patched.sentinel}"


# What --check (sources + patch, no reproducer) can show for each run verdict.
CHECK_EQUIVALENT = {
    CONFIRMED: (CHECKED,),
    FIXED_UPSTREAM: (CHECKED, ALREADY_APPLIED, PATCH_CONFLICT),  # upstream's own fix may touch our lines
    PATCH_CONFLICT: (PATCH_CONFLICT,),
    FIX_FAILED: (CHECKED, ALREADY_APPLIED),
    INCONCLUSIVE: (CHECKED,),
}


def expected(pack_expect: dict[str, str], upstream_ref: str | None, check_only: bool,
             base_ref: str | None = None) -> tuple[str, ...]:
    """Verdicts that count as 'as expected' for this ref. At the pinned base that is CONFIRMED unless the
    pack's [expect] names the base ref (a precision pack whose effect was measured INCONCLUSIVE)."""
    if upstream_ref is None:
        wanted: tuple[str, ...] = (pack_expect.get(base_ref, CONFIRMED),) if base_ref else (CONFIRMED,)
    elif upstream_ref in pack_expect:
        wanted = (pack_expect[upstream_ref],)
    else:
        # An unlisted ref: live-and-fixed-by-us and fixed-upstream are both healthy states; the
        # nightly's job is to notice when one turns into something else.
        wanted = (CONFIRMED, FIXED_UPSTREAM)
    if not check_only:
        return wanted
    return tuple(dict.fromkeys(v for w in wanted for v in CHECK_EQUIVALENT[w]))


def classify_contract(stage: StageOutcome) -> tuple[str, str]:
    """A contract pack's one stage: (verdict, one-sentence reason). Trust rules as for bug packs: only a
    trusted sentinel (exit 0, one well-formed EVIDENCE, one sentinel) gives HELD or BROKEN."""
    if stage.timed_out:
        return TIMEOUT, "the contract stage ran past its timeout"
    if stage.sentinel is None:
        return ERROR, f"the contract stage gave no trusted sentinel: {stage.error}"
    if stage.sentinel == "CONTRACT_HELD":
        return HELD, "the contract holds at this ref"
    if stage.sentinel == "CONTRACT_BROKEN":
        return BROKEN, "the contract is broken at this ref (its EVIDENCE names what broke)"
    return ERROR, f"the contract stage was {stage.sentinel} (see its EVIDENCE reason)"


def expected_contract(pack_expect: dict[str, str], ref: str, check_only: bool) -> tuple[str, ...]:
    """What a contract pack should say at `ref` (the pinned base's ref when no --upstream is given):
    the pack's [expect] entry for that ref, else HELD. A contract found broken is a finding the
    manifest states per ref (BROKEN where upstream is known to break it), never a silent default."""
    if check_only:
        return (CHECKED,)
    return (pack_expect.get(ref, HELD),)
