"""Stage plans: which stages a pack's kind runs, on which tree, in which environment, and how their
outcomes become one verdict. The pipeline has one loop over a plan's stages; a new kind of pack is a new
plan here (data plus a classifier), not a new run function.

- patch (kinds bugfix, refactor, precision): "clean" on the pristine tree, then "patched" on a copy with
  the pack's patch, when the clean stage said BUG_REPRODUCED or INCONCLUSIVE (an inconclusive precision
  pack still shows both sides).
- contract (kinds parity, perf): one "contract" stage on the pristine tree: HELD or BROKEN.
- compiler (a [compiler] table): the same reproducer twice on the pristine tree, in the base release's
  environment ("clean") and in the first release with upstream's fix ("fixed-release"); at
  `--upstream <fixed release>` only the first stage runs, in the fixed release's environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core.manifest import CONTRACT_KINDS, Pack
from ..core.model import (
    CONTRACT_SENTINELS,
    VERDICT_SENTINELS,
    PatchStatus,
    Sentinel,
    StageOutcome,
    Verdict,
)
from . import verdicts

# What a stage needs from the one before it to run at all (both stages are shown for an inconclusive one).
AFTER_BUG = (Sentinel.BUG_REPRODUCED, Sentinel.INCONCLUSIVE)


@dataclass(frozen=True)
class StageSpec:
    name: str  # in logs, results and receipts
    tree: str  # "clean": a copy of the pristine tree; "patched": a copy with the pack's patch applied
    env: str  # "pack": the pack's stack; "fixed": a compiler pack's fixed-release stack
    after: tuple[Sentinel, ...] = ()  # run only when the previous stage said one of these (empty: always)
    label: str = ""  # what a report calls it ("with the patch")


Classifier = Callable[[list[StageOutcome], str, Pack], tuple[Verdict, str]]


@dataclass(frozen=True)
class Plan:
    name: str
    stages: tuple[StageSpec, ...]
    sentinels: tuple[Sentinel, ...]  # what this plan's reproducers may print
    classify: Classifier
    check: Callable[[str, Pack], tuple[Verdict, str]]  # --check: (patch status, pack) -> verdict

    @property
    def trees(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.tree for s in self.stages))


def _outcome(outcomes: list[StageOutcome], i: int) -> StageOutcome | None:
    return outcomes[i] if i < len(outcomes) else None


def _classify_patch(outcomes: list[StageOutcome], patch: str, pack: Pack) -> tuple[Verdict, str]:
    return verdicts.classify(outcomes[0], patch, _outcome(outcomes, 1))


def _classify_compiler(outcomes: list[StageOutcome], patch: str, pack: Pack) -> tuple[Verdict, str]:
    fix = pack.compiler
    verdict, reason = verdicts.classify(outcomes[0], PatchStatus.APPLIED, _outcome(outcomes, 1),
                                        second=f"the {fix.fixed_release} stage")
    if verdict == Verdict.CONFIRMED:
        reason = (f"the bug reproduces with {fix.base_wheels[0]} and is gone with the released {fix.fixed_release} "
                  f"({fix.fixed_wheels[0]}, which contains {fix.fix_commit[:12]}); validated on that release, not "
                  "by applying a patch")
    return verdict, reason


def _classify_fixed_release(outcomes: list[StageOutcome], patch: str, pack: Pack) -> tuple[Verdict, str]:
    verdict, reason = verdicts.classify(outcomes[0], PatchStatus.APPLIED, None)
    if verdict == Verdict.FIXED_UPSTREAM:
        reason = f"the bug's signature is gone with the released {pack.compiler.fixed_release} " \
                 f"({pack.compiler.fixed_wheels[0]})"
    return verdict, reason


def _check_patch(patch: str, pack: Pack) -> tuple[Verdict, str]:
    return verdicts.check_verdict(patch)


def _check_contract(patch: str, pack: Pack) -> tuple[Verdict, str]:
    return Verdict.CHECKED, "sources fetched (contract pack: no patch; the reproducer did not run)"


def _check_compiler(patch: str, pack: Pack) -> tuple[Verdict, str]:
    fix = pack.compiler
    return Verdict.CHECKED, (f"sources fetched (compiler pack: the fix is {fix.package} {fix.fixed_release}, "
                             "no patch; the reproducer did not run)")


PATCH = Plan("patch", (StageSpec("clean", "clean", "pack", label="current code"),
                       StageSpec("patched", "patched", "pack", AFTER_BUG, label="with the patch")),
             VERDICT_SENTINELS, _classify_patch, _check_patch)
CONTRACT = Plan("contract", (StageSpec("contract", "clean", "pack", label="at this ref"),),
                CONTRACT_SENTINELS, lambda o, p, pack: verdicts.classify_contract(o[0]), _check_contract)
COMPILER = Plan("compiler", (StageSpec("clean", "clean", "pack", label="base release"),
                             StageSpec("fixed-release", "clean", "fixed", AFTER_BUG, label="fixed release")),
                VERDICT_SENTINELS, _classify_compiler, _check_compiler)
# A compiler pack at its fixed release: that release's environment is the clean code there.
COMPILER_AT_FIX = Plan("compiler", (StageSpec("clean", "clean", "fixed", label="fixed release"),),
                       VERDICT_SENTINELS, _classify_fixed_release, _check_compiler)

PLAN_OF_KIND = {"bugfix": PATCH, "refactor": PATCH, "precision": PATCH, **{k: CONTRACT for k in CONTRACT_KINDS}}


class NotApplicable(Exception):
    """This pack has no stages at the requested ref (a compiler pack at a ref without a release it names)."""


def plan_for(pack: Pack, upstream_ref: str | None) -> Plan:
    if pack.compiler is None:
        return PLAN_OF_KIND[pack.kind]
    if upstream_ref is None:
        return COMPILER
    if upstream_ref == pack.compiler.fixed_release:
        return COMPILER_AT_FIX
    raise NotApplicable(
        f"pack {pack.name} is a compiler pack: its stages import released {pack.compiler.package} wheels; "
        f"{upstream_ref} has no release the pack names (only {pack.compiler.fixed_release}), and a source build "
        "of the compiler is not done here")


def stage_labels(pack: Pack) -> dict[str, str]:
    """Stage name -> what a report calls it, for this pack's plan at its base."""
    plan = plan_for(pack, None)
    labels = {s.name: s.label for s in plan.stages}
    if pack.compiler is not None:
        labels["fixed-release"] = f"with {pack.compiler.fixed_release}"
    return labels


def should_run(spec: StageSpec, previous: list[StageOutcome], patch: str) -> bool:
    if spec.tree == "patched" and patch != PatchStatus.APPLIED:
        return False
    if not spec.after:
        return True
    return bool(previous) and previous[-1].sentinel in spec.after
