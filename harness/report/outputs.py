"""What a run says: a terminal table, and JSON / JUnit files on request."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .. import __version__
from ..run.pipeline import PackResult
from .markdown import headline

STYLE = {"CONFIRMED": "bold green", "FIXED_UPSTREAM": "cyan", "CHECKED": "green", "SKIPPED": "yellow",
         "PATCH_CONFLICT": "magenta", "ALREADY_APPLIED": "cyan", "HELD": "bold green", "BROKEN": "bold magenta",
         "INCONCLUSIVE": "yellow"}


def _where(r: PackResult) -> str:
    return f"{r.where()} ({(r.source or {}).get('kind', '?')})"


def stage_numbers(r: PackResult) -> str:
    """Each stage's headline evidence, for JUnit failure text."""
    return " | ".join(f"{s.name}: {headline(s.evidence)}" for s in r.stages if s.evidence)


def _cell(stages: dict, name: str) -> str:
    if name == "clean" and "contract" in stages:  # a contract pack's one stage shares the first column
        name = "contract"
    if name == "patched" and "fixed-release" in stages:  # a compiler pack's second stage: the fixed release
        name = "fixed-release"
    if name not in stages:
        return "-"
    stage = stages[name]
    return stage.sentinel or f"error: {stage.error}"[:60]


def print_table(results: list[PackResult], console: Console) -> None:
    table = Table(title="upstream-repro verdicts", show_lines=False)
    for col in ("pack", "target", "ref @ commit (source)", "clean / contract", "patched", "verdict", "expected",
                "time"):
        table.add_column(col, overflow="fold")
    for r in results:
        stages = {s.name: s for s in r.stages}
        mark = "yes" if r.as_expected else f"NO (wanted {'/'.join(r.expected)})"
        table.add_row(r.pack, r.repo, _where(r), _cell(stages, "clean"), _cell(stages, "patched"),
                      f"[{STYLE.get(r.verdict, 'bold red')}]{r.verdict}[/]", mark,
                      f"{r.durations.get('total_s', 0):.0f}s")
    console.print(table)
    for r in results:
        console.print(f"[bold]{r.pack}[/]: {r.verdict}: {r.reason}")
        for stage in r.stages:
            if stage.evidence is not None:
                console.print(f"  {stage.name} EVIDENCE {json.dumps(stage.evidence, sort_keys=True)}",
                              highlight=False, soft_wrap=True)
        console.print(f"  logs: {r.log_dir}", highlight=False)


def write_json(results: list[PackResult], path: Path, meta: dict[str, Any]) -> None:
    doc = {"runner_version": __version__, **meta, "packs": [r.to_dict() for r in results]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def write_junit(results: list[PackResult], path: Path) -> None:
    """One testcase per pack: failure when the verdict is not the expected one, skipped when SKIPPED."""
    failures = sum(1 for r in results if not r.as_expected and r.verdict != "SKIPPED")
    skipped = sum(1 for r in results if r.verdict == "SKIPPED")
    suite = ET.Element("testsuite", name="upstream-repro", tests=str(len(results)),
                       failures=str(failures), skipped=str(skipped), errors="0",
                       time=f"{sum(r.durations.get('total_s', 0) for r in results):.2f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"packs.{r.repo}", name=f"{r.pack}@{r.ref}",
                             time=f"{r.durations.get('total_s', 0):.2f}")
        if r.verdict == "SKIPPED":
            ET.SubElement(case, "skipped", message=r.reason)
        elif not r.as_expected:
            node = ET.SubElement(case, "failure", type=r.verdict,
                                 message=f"{r.verdict} (expected {'/'.join(r.expected)}): {r.reason}")
            node.text = stage_numbers(r)
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join([f"verdict: {r.verdict}", f"reason: {r.reason}", f"where: {_where(r)}"] + [
            f"{s.name}: sentinel={s.sentinel} EVIDENCE {json.dumps(s.evidence, sort_keys=True)}"
            for s in r.stages])
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
