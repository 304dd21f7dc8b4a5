import pytest

from harness.run.verdicts import StageOutcome, classify, expected

BUG, FIX, INC = StageOutcome("BUG_REPRODUCED"), StageOutcome("FIX_VALIDATED"), StageOutcome("INCONCLUSIVE")


@pytest.mark.parametrize(
    "clean, patch, patched, verdict",
    [
        (BUG, "applied", FIX, "CONFIRMED"),
        (FIX, "applied", None, "FIXED_UPSTREAM"),
        (FIX, "conflict", None, "FIXED_UPSTREAM"),
        (BUG, "conflict", None, "PATCH_CONFLICT"),
        (BUG, "applied", BUG, "FIX_FAILED"),
        (BUG, "applied", INC, "FIX_FAILED"),
        (BUG, "applied", StageOutcome(None, error="exit code 1"), "FIX_FAILED"),
        (BUG, "applied", StageOutcome(None, timed_out=True), "FIX_FAILED"),
        (BUG, "already_applied", None, "FIX_FAILED"),
        (INC, "applied", None, "INCONCLUSIVE"),
        (INC, "applied", FIX, "INCONCLUSIVE"),
        (StageOutcome(None, error="crash"), "applied", None, "ERROR"),
        (StageOutcome(None, timed_out=True), "applied", None, "TIMEOUT"),
    ],
)
def test_design_table(clean, patch, patched, verdict):
    assert classify(clean, patch, patched)[0] == verdict


def test_expected_per_ref():
    assert expected({}, None, False) == ("CONFIRMED",)
    assert expected({"main": "FIXED_UPSTREAM"}, "main", False) == ("FIXED_UPSTREAM",)
    assert expected({}, "some-branch", False) == ("CONFIRMED", "FIXED_UPSTREAM")
    assert expected({}, None, True) == ("CHECKED",)
    assert "PATCH_CONFLICT" in expected({"main": "FIXED_UPSTREAM"}, "main", True)


def test_expected_at_the_base_may_be_stated():
    # a precision pack measured INCONCLUSIVE at its base says so in [expect] under the base's ref
    assert expected({"v1": "INCONCLUSIVE"}, None, False, base_ref="v1") == ("INCONCLUSIVE",)
    assert expected({"main": "FIXED_UPSTREAM"}, None, False, base_ref="v1") == ("CONFIRMED",)


def test_inconclusive_reason_names_the_patched_stage():
    verdict, reason = classify(INC, "applied", FIX)
    assert verdict == "INCONCLUSIVE" and "FIX_VALIDATED" in reason
