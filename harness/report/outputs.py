"""What a run says: a terminal table and summary, and JSON / JUnit files on request.

The console shows evidence and reasons verbatim (no markup is read from them: a `[/x]` in a reproducer's
EVIDENCE is text), JSON lists included."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..core import fsutil
from ..core.model import PackResult, Verdict
from .markdown import headline

STYLE = {Verdict.CONFIRMED: "bold green", Verdict.FIXED_UPSTREAM: "cyan", Verdict.CHECKED: "green",
         Verdict.SKIPPED: "yellow", Verdict.PATCH_CONFLICT: "magenta", Verdict.ALREADY_APPLIED: "cyan",
         Verdict.HELD: "bold green", Verdict.BROKEN: "bold magenta", Verdict.INCONCLUSIVE: "yellow"}


def _where(r: PackResult) -> str:
    return f"{r.where()} ({(r.source or {}).get('kind', '?')})"


def stage_numbers(r: PackResult, paths: tuple[str, ...] = ()) -> str:
    """Each stage's headline evidence (the pack's [report].headline paths where given)."""
    return " | ".join(f"{s.name}: {headline(s.evidence, paths)}" for s in r.stages if s.evidence)


def _cell(stages: dict, name: str) -> str:
    if name == "clean" and "contract" in stages:  # a contract pack's one stage shares the first column
        name = "contract"
    if name == "patched" and "fixed-release" in stages:  # a compiler pack's second stage: the fixed release
        name = "fixed-release"
    if name not in stages:
        return "-"
    stage = stages[name]
    return stage.sentinel or f"error: {stage.error}"[:60]


def summary(results: list[PackResult]) -> str:
    """One line: how many packs came to each verdict, and whether anything ran on a GPU."""
    counts = Counter(str(r.verdict) for r in results)
    line = ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    gpus = {(r.environment.get("torch") or {}).get("cuda", {}).get("device_name") for r in results if r.stages}
    gpus.discard(None)
    ran = [r.id for r in results if r.stages]
    if gpus:
        where = f"stages ran on {', '.join(sorted(gpus))}"
    elif ran:
        where = f"nothing was verified on a GPU; packs that ran on the CPU: {', '.join(ran)}"
    else:
        where = "nothing was verified on a GPU, and no pack ran"
    return f"{len(results)} pack(s): {line}; {where}"


def print_table(results: list[PackResult], console: Console) -> None:
    table = Table(title="upstream-repro verdicts", show_lines=False)
    for col in ("pack", "target", "ref @ commit (source)", "clean / contract", "patched", "verdict", "expected",
                "time"):
        table.add_column(col, overflow="fold")
    for r in results:
        stages = {s.name: s for s in r.stages}
        mark = "yes" if r.as_expected else f"NO (wanted {'/'.join(r.expected)})"
        table.add_row(escape(r.pack), escape(r.repo), escape(_where(r)), escape(_cell(stages, "clean")),
                      escape(_cell(stages, "patched")), f"[{STYLE.get(r.verdict, 'bold red')}]{escape(r.verdict)}[/]",
                      escape(mark), f"{r.durations.get('total_s', 0):.0f}s")
    console.print(table)
    for r in results:
        console.print(f"{r.pack}: {r.verdict}: {r.reason}", markup=False, highlight=False, soft_wrap=True)
        for stage in r.stages:
            if stage.evidence is not None:
                console.print(f"  {stage.name} EVIDENCE {json.dumps(stage.evidence, sort_keys=True)}", markup=False,
                              highlight=False, soft_wrap=True)
        if Path(r.log_dir).is_dir():
            console.print(f"  logs: {r.log_dir}", markup=False, highlight=False)
    console.print(summary(results), markup=False, highlight=False)


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: such a float (from a timing, never from trusted evidence) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(results: list[PackResult], path: Path, meta: dict[str, Any]) -> None:
    doc = {"runner_version": __version__, **meta, "summary": summary(results), "packs": [r.to_dict() for r in results]}
    fsutil.atomic_write(path, json.dumps(_finite(doc), indent=2, default=str, allow_nan=False) + "\n")


def write_junit(results: list[PackResult], path: Path, headlines: dict[str, tuple[str, ...]] | None = None) -> None:
    """One testsuite per upstream repository, one testcase per pack (classname: the pack's id); failure
    when the verdict is not the expected one, skipped when SKIPPED; the headline numbers in the failure
    and system-out text; GPU, commit and ref as properties."""
    headlines = headlines or {}
    root = ET.Element("testsuites", name="upstream-repro", tests=str(len(results)),
                      failures=str(sum(1 for r in results if not r.as_expected and r.verdict != Verdict.SKIPPED)),
                      skipped=str(sum(1 for r in results if r.verdict == Verdict.SKIPPED)), errors="0",
                      time=f"{sum(r.durations.get('total_s', 0) for r in results):.2f}")
    by_repo: dict[str, list[PackResult]] = {}
    for r in results:
        by_repo.setdefault(r.repo, []).append(r)
    for repo, group in by_repo.items():
        failures = sum(1 for r in group if not r.as_expected and r.verdict != Verdict.SKIPPED)
        skipped = sum(1 for r in group if r.verdict == Verdict.SKIPPED)
        suite = ET.SubElement(root, "testsuite", name=repo, tests=str(len(group)), failures=str(failures),
                              skipped=str(skipped), errors="0",
                              time=f"{sum(r.durations.get('total_s', 0) for r in group):.2f}")
        for r in group:
            numbers = stage_numbers(r, headlines.get(r.pack, ()))
            case = ET.SubElement(suite, "testcase", classname=f"pack{r.id}", name=f"{r.pack}@{r.ref}",
                                 time=f"{r.durations.get('total_s', 0):.2f}")
            props = ET.SubElement(case, "properties")
            cuda = (r.environment.get("torch") or {}).get("cuda", {})
            for name, value in (("gpu", cuda.get("device_name") or "none"), ("commit", r.commit or ""),
                                ("ref", r.ref), ("upstream_ref", r.upstream_ref or ""), ("verdict", str(r.verdict)),
                                ("expected", "/".join(r.expected)), ("jobs", str(r.jobs))):
                ET.SubElement(props, "property", name=name, value=value)
            if r.verdict == Verdict.SKIPPED:
                ET.SubElement(case, "skipped", message=r.reason)
            elif not r.as_expected:
                node = ET.SubElement(case, "failure", type=str(r.verdict),
                                     message=f"{r.verdict} (expected {'/'.join(r.expected)}): {r.reason}"[:2000])
                node.text = numbers or r.reason
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join([f"verdict: {r.verdict}", f"reason: {r.reason}", f"where: {_where(r)}",
                                  f"headline: {numbers}"] + [
                f"{s.name}: sentinel={s.sentinel} EVIDENCE {json.dumps(s.evidence, sort_keys=True)}"
                for s in r.stages])
    fsutil.atomic_write(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
