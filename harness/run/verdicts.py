"""From what each stage measured to one verdict per pack per upstream ref, and which verdicts count as
expected there. One classifier per stage plan (run/kinds.py names which plan a pack follows)."""

from __future__ import annotations

from ..core.model import PatchStatus, Sentinel, StageOutcome, Verdict

BUG, FIX, UNSURE = Sentinel.BUG_REPRODUCED, Sentinel.FIX_VALIDATED, Sentinel.INCONCLUSIVE


def classify(clean: StageOutcome, patch_status: str, patched: StageOutcome | None,
             second: str = "the patched stage") -> tuple[Verdict, str]:
    """A bug pack (clean, then patched) or a compiler pack (base release, then fixed release): (verdict,
    one-sentence reason). `second` names the second stage in reasons."""
    if clean.timed_out:
        return Verdict.TIMEOUT, "the clean stage ran past its timeout"
    if clean.sentinel is None:
        return Verdict.ERROR, f"the clean stage gave no trusted sentinel: {clean.error}"
    if clean.sentinel == UNSURE:
        after = f"; {second} said {patched.sentinel or patched.error}" if patched else ""
        return Verdict.INCONCLUSIVE, f"the clean stage measured no conclusive effect (see its EVIDENCE){after}"
    if clean.sentinel == FIX:
        return Verdict.FIXED_UPSTREAM, "the bug's signature is gone on the clean upstream code"
    # clean stage: BUG_REPRODUCED
    if patch_status == PatchStatus.CONFLICT:
        return Verdict.PATCH_CONFLICT, "the bug is live and the patch does not apply (needs a rebase)"
    if patch_status == PatchStatus.INVALID:
        return Verdict.ERROR, "the bug is live, and the pack's patch is not one that may be applied"
    if patch_status == PatchStatus.ALREADY_APPLIED:
        return Verdict.FIX_FAILED, "the patch is already applied upstream, yet the bug reproduces"
    if patched is None:
        return Verdict.FIX_FAILED, f"{second} did not run"
    if patched.timed_out:
        return Verdict.FIX_FAILED, f"the bug is live; {second} ran past its timeout"
    if patched.sentinel == FIX:
        return Verdict.CONFIRMED, "the bug reproduces at this ref and the patch fixes it"
    if patched.sentinel is None:
        return Verdict.FIX_FAILED, f"the bug is live; {second} gave no trusted sentinel: {patched.error}"
    return Verdict.FIX_FAILED, f"the bug is live; {second} said {patched.sentinel}"


def classify_contract(stage: StageOutcome) -> tuple[Verdict, str]:
    """A contract pack's one stage. Trust rules as for bug packs: only a trusted sentinel gives HELD or BROKEN."""
    if stage.timed_out:
        return Verdict.TIMEOUT, "the contract stage ran past its timeout"
    if stage.sentinel is None:
        return Verdict.ERROR, f"the contract stage gave no trusted sentinel: {stage.error}"
    if stage.sentinel == Sentinel.CONTRACT_HELD:
        return Verdict.HELD, "the contract holds at this ref"
    if stage.sentinel == Sentinel.CONTRACT_BROKEN:
        return Verdict.BROKEN, "the contract is broken at this ref (its EVIDENCE names what broke)"
    return Verdict.ERROR, f"the contract stage was {stage.sentinel} (see its EVIDENCE reason)"


def check_verdict(patch_status: str) -> tuple[Verdict, str]:
    """--check (sources and patch, no reproducer) for a pack with a patch."""
    return {
        PatchStatus.APPLIED: (Verdict.CHECKED, "sources fetched and the patch applies cleanly"),
        PatchStatus.ALREADY_APPLIED: (Verdict.ALREADY_APPLIED, "the patch is already in upstream at this ref"),
        PatchStatus.CONFLICT: (Verdict.PATCH_CONFLICT, "the patch does not apply"),
        PatchStatus.INVALID: (Verdict.ERROR, "the patch is not one that may be applied"),
        PatchStatus.NO_PATCH: (Verdict.CHECKED, "sources fetched (this pack has no patch)"),
    }[PatchStatus(patch_status)]


# What --check (sources + patch, no reproducer) can show for each run verdict.
CHECK_EQUIVALENT = {
    Verdict.CONFIRMED: (Verdict.CHECKED,),
    Verdict.FIXED_UPSTREAM: (Verdict.CHECKED, Verdict.ALREADY_APPLIED, Verdict.PATCH_CONFLICT),  # upstream's fix
    Verdict.PATCH_CONFLICT: (Verdict.PATCH_CONFLICT,),
    Verdict.FIX_FAILED: (Verdict.CHECKED, Verdict.ALREADY_APPLIED),
    Verdict.INCONCLUSIVE: (Verdict.CHECKED,),
}


def expected(pack_expect: dict[str, str], upstream_ref: str | None, check_only: bool,
             base_ref: str | None = None) -> tuple[str, ...]:
    """Verdicts that count as 'as expected' for this ref. At the pinned base that is CONFIRMED unless the
    pack's [expect] names the base ref (a precision pack whose effect was measured INCONCLUSIVE)."""
    if upstream_ref is None:
        wanted: tuple[str, ...] = (pack_expect.get(base_ref, Verdict.CONFIRMED),) if base_ref else (Verdict.CONFIRMED,)
    elif upstream_ref in pack_expect:
        wanted = (pack_expect[upstream_ref],)
    else:
        # An unlisted ref: live-and-fixed-by-us and fixed-upstream are both healthy states; the
        # nightly's job is to notice when one turns into something else.
        wanted = (Verdict.CONFIRMED, Verdict.FIXED_UPSTREAM)
    wanted = tuple(Verdict(w) for w in wanted)
    if not check_only:
        return wanted
    return tuple(dict.fromkeys(v for w in wanted for v in CHECK_EQUIVALENT[w]))


def expected_contract(pack_expect: dict[str, str], ref: str, check_only: bool) -> tuple[str, ...]:
    """What a contract pack should say at `ref` (the pinned base's ref when no --upstream is given):
    the pack's [expect] entry for that ref, else HELD. A contract found broken is a finding the
    manifest states per ref (BROKEN where upstream is known to break it), never a silent default."""
    if check_only:
        return (Verdict.CHECKED,)
    return (Verdict(pack_expect.get(ref, Verdict.HELD)),)
