"""Upstream's own tests as a regression guard (PASS_TO_PASS): the tests a pack names in [tests] run on the
clean and on the patched tree, in the same environment and with the same import setup as its stages, and
the result says which passed, which failed, and which fail with the patch but pass without it. A patch that
breaks a test that passes on the clean tree is never reported CONFIRMED: the verdict becomes FIX_FAILED and
names the tests. Where the tests cannot run at all (pytest or a test's own dependency missing from the
environment, the test file not in the tree), the record says so and the verdict is unchanged."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..core.manifest import Pack
from ..core.model import PackResult, Verdict
from ..envs.provision import Env
from . import execution


def _cases(junit: Path) -> dict[str, str]:
    """test id -> passed | failed | error | skipped, from pytest's JUnit XML."""
    out: dict[str, str] = {}
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return out
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                state = {"failure": "failed"}.get(child.tag, child.tag)
        out[name] = state
    return out


def run_tests(pack: Pack, tree: Path, env: Env, variables: dict[str, str], work: Path, label: str) -> dict[str, Any]:
    """Run the pack's upstream tests on one tree; a summary (counts, failing ids, how it ran)."""
    missing = [p for p in pack.tests if not (tree / p.split("::")[0]).exists()]
    if missing:
        return {"ran": False, "why": f"not in this tree: {', '.join(missing)}"}
    junit = work / f"upstream-tests-{label}.xml"
    cmd = [env.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *pack.tests]
    if pack.tests_select:
        cmd += ["-k", pack.tests_select]
    variables = {**variables, "PYTHONDONTWRITEBYTECODE": "1"}
    if pack.tests_pin_autotune:  # the plugin alone on the path, not the harness
        plugins = work / f"upstream-tests-{label}-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(__file__).with_name("pytest_pin_autotune.py"), plugins / "pytest_pin_autotune.py")
        variables["PYTHONPATH"] = os.pathsep.join([str(plugins), variables.get("PYTHONPATH", "")])
        cmd += ["-p", "pytest_pin_autotune"]
    done = execution.run_command(cmd, tree, variables, pack.tests_timeout_s, work / f"upstream-tests-{label}.log")
    cases = _cases(junit)
    if not cases:
        return {"ran": False, "why": (f"timed out after {pack.tests_timeout_s}s" if done.timed_out else
                                      f"pytest collected nothing (exit {done.exit_code}): "
                                      f"{done.last_stderr_line[:200] or done.stdout_tail.strip()[-200:]}"),
                "log": str(done.log)}
    counts: dict[str, int] = {}
    for state in cases.values():
        counts[state] = counts.get(state, 0) + 1
    return {"ran": True, "counts": counts, "failed": sorted(n for n, s in cases.items() if s in ("failed", "error")),
            "passed_ids": sorted(n for n, s in cases.items() if s == "passed"), "exit_code": done.exit_code,
            "duration_s": round(done.duration_s, 1), "log": str(done.log)}


def judge(result: PackResult, clean: dict[str, Any], patched: dict[str, Any]) -> dict[str, Any]:
    """The record of both runs; a CONFIRMED verdict becomes FIX_FAILED when the patch breaks a passing test."""
    newly = []
    if clean.get("ran") and patched.get("ran"):
        newly = sorted(set(clean["passed_ids"]) & set(patched["failed"]))
    record = {"clean": {k: v for k, v in clean.items() if k != "passed_ids"},
              "patched": {k: v for k, v in patched.items() if k != "passed_ids"}, "newly_failing": newly}
    if newly and result.verdict == Verdict.CONFIRMED:
        result.verdict = Verdict.FIX_FAILED
        result.reason = (f"the patch fixes the reproducer but breaks {len(newly)} upstream test(s) that pass on the "
                         f"clean tree: {', '.join(newly[:3])}")
    return record
