"""--merge A.json B.json ...: one report from several runs' --json reports.

A nightly that fans packs out over several GPU runners (a job matrix by stack), or a GPU node whose jobs
are short and whose file transfers are small (say 10 minutes and 64 MiB each), runs the collection in
parts. The merged report
holds every part's pack results unchanged, names each part (file, command, ref) under `merged_from`, and
refuses a pack that appears in two parts: one verdict per pack, and no silent choice between two runs.
The JUnit and markdown outputs are then written from it as from a single run.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..core.model import PackResult, StageRecord


class MergeError(Exception):
    pass


def result_from_dict(data: dict[str, Any]) -> PackResult:
    """A PackResult as --json wrote it (fields this runner does not know are dropped)."""
    known = {f.name for f in fields(PackResult)}
    stage_keys = {f.name for f in fields(StageRecord)}
    stages = [StageRecord(**{k: v for k, v in s.items() if k in stage_keys}) for s in data.get("stages") or []]
    return PackResult(**{**{k: v for k, v in data.items() if k in known}, "stages": stages})


def merge(paths: list[Path]) -> tuple[dict[str, Any], list[PackResult]]:
    """(meta, results in the parts' order) for the --json reports at paths."""
    results: list[PackResult] = []
    seen: dict[str, Path] = {}
    parts = []
    for path in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MergeError(f"--merge {path}: not a readable --json report ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("packs"), list):
            raise MergeError(f"--merge {path}: no 'packs' list; is it a --json report of a run?")
        names = []
        for data in doc["packs"]:
            name = data.get("pack")
            if name in seen:
                raise MergeError(f"--merge: pack {name} is in both {seen[name]} and {path}; merge parts that ran "
                                 f"different packs, or drop one of the two runs")
            seen[name] = path
            names.append(name)
            results.append(result_from_dict(data))
        parts.append({"file": path.name, "argv": doc.get("argv"), "upstream": doc.get("upstream"),
                      "check": doc.get("check"), "runner_version": doc.get("runner_version"), "packs": names})
    upstreams = {p["upstream"] for p in parts}
    meta = {"merged_from": parts, "upstream": upstreams.pop() if len(upstreams) == 1 else "mixed",
            "check": any(p["check"] for p in parts)}
    return meta, results
