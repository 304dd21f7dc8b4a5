"""Evidence receipts: what a real run measured, written by the runner, checked against the files
it ran. A receipt whose pack.toml, repro.py or patch changed since is stale."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from .. import __version__
from ..core.layout import Layout
from ..core.manifest import Pack
from ..run.pipeline import PackResult
from ..sources import gitutil


class ReceiptError(Exception):
    pass


@cache
def _schema() -> dict[str, Any]:
    return json.loads(resources.files("harness.core").joinpath("schemas/receipt.schema.json").read_text())


def sha256_file(path: Path) -> str | None:
    """sha256 of a file, read in chunks (bundles hold archives of tens of MiB); None when absent."""
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(path: Path, *, with_expect: bool = False) -> str:
    """sha256 of pack.toml without its [report] and [expect] tables and without the `stack = ...` line of
    [requires]: how results are shown does not change what was measured, so editing it must not make a
    receipt stale. Nor does [expect]: it forecasts the verdict at each upstream ref (and changes when
    upstream fixes or breaks something), while a receipt records the verdict measured. Nor does the stack:
    it names the container `--docker` runs the pack in (how to run it), not what the pack claims or what a
    run measured, and a receipt records the environment that actually ran (Python, torch, triton,
    tilelang, GPU) whatever started it. So naming or changing a pack's stack keeps its receipts current;
    the line must stay on one line for that (the schema allows only a plain name). The same holds for
    `exclusive = ...` in [run] (scheduling under --jobs; the receipt records the jobs). Without any of
    these, the file's own sha256. `with_expect` keeps [expect]: receipts written before it was left out
    (2026-11-23) hold that digest."""
    dropped = {b"report"} if with_expect else {b"report", b"expect"}
    kept, skipping, table = [], False, b""
    for line in path.read_bytes().splitlines(keepends=True):
        header = re.match(rb"^\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if header:
            table = header.group(1).strip()
            skipping = table in dropped
            if skipping and kept and not kept[-1].strip():
                kept.pop()  # the one blank line that separates a dropped table from what precedes it
        if table == b"requires" and re.match(rb"""^\s*["']?stack["']?\s*=""", line):
            continue
        if table == b"run" and re.match(rb"""^\s*["']?exclusive["']?\s*=""", line):
            continue  # how to schedule it under --jobs, like the stack: not what it claims
        if not skipping:
            kept.append(line)
    return hashlib.sha256(b"".join(kept)).hexdigest()


def harness_digest() -> str:
    """sha256 over the harness package's files (path and content, sorted): which runner code made a
    receipt, independent of git. A GPU node may hold the collection's files without its current HEAD
    (the device machine here syncs files, not .git), so collection_commit alone can name an older commit."""
    root = resources.files("harness")
    digest = hashlib.sha256()
    for path in sorted(Path(str(root)).rglob("*")):
        if path.is_file() and path.suffix in (".py", ".json"):
            digest.update(path.relative_to(Path(str(root))).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def current_hashes(pack: Pack) -> dict[str, str | None]:
    return {"pack.toml": manifest_digest(pack.manifest_path), "repro.py": sha256_file(pack.repro_path),
            "patch": sha256_file(pack.patch_path) if pack.has_patch else None}


def receipt_path(pack: Pack, upstream_ref: str | None, layout: Layout) -> Path:
    if upstream_ref is None:
        return layout.evidence / f"{pack.name}.json"
    return layout.evidence / f"{pack.name}.at-{re.sub(r'[^A-Za-z0-9._-]', '_', upstream_ref)}.json"


def build(result: PackResult, pack: Pack, command: list[str], layout: Layout) -> dict[str, Any]:
    if result.verdict in ("SKIPPED", "CHECKED", "ALREADY_APPLIED") or not result.stages:
        raise ReceiptError(f"pack {pack.name}: a {result.verdict} run measured nothing; no receipt written")
    src = result.source or {}
    try:
        head = gitutil.git(["rev-parse", "HEAD"], cwd=layout.root).strip()
        dirty = bool(gitutil.git(["status", "--porcelain", "--untracked-files=no"], cwd=layout.root).strip())
    except Exception:  # noqa: BLE001 - a collection copied without .git still gets a receipt
        head, dirty = None, None
    return {
        "schema_version": 1,
        "pack": pack.name,
        "id": pack.id,
        "title": pack.title,
        "target": {"repo": pack.repo, "ref": result.ref, "upstream_ref": result.upstream_ref,
                   "commit": result.commit, "source_kind": src.get("kind", "local"),
                   "sdist": src.get("sdist"), "resolution": src.get("resolution", "")},
        "verdict": result.verdict,
        "reason": result.reason,
        "expected": result.expected,
        "as_expected": result.as_expected,
        "patch": result.patch or {"status": "no_patch"},
        **({"companions": result.companions} if result.companions else {}),
        "stages": [{k: v for k, v in vars(s).items() if k != "log"} for s in result.stages],
        "durations": result.durations,
        "repeat": result.repeat,
        "environment": result.environment,
        "hashes": current_hashes(pack),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runner": {"version": __version__, "command": " ".join(command), "collection_commit": head,
                   "collection_dirty": dirty, "harness_sha256": harness_digest(),
                   "jobs": result.jobs},
    }


def _run_record(receipt: dict[str, Any]) -> dict[str, Any]:
    return {"date": receipt["date"], "compile_caches": receipt["environment"].get("compile_caches"),
            "total_s": receipt["durations"].get("total_s"), "jobs": receipt["runner"].get("jobs", 1),
            "stages_s": {s["name"]: s["duration_s"] for s in receipt["stages"]}}


def write(receipt: dict[str, Any], path: Path, pack: Pack) -> Path:
    """Write the receipt; earlier runs of the very same files and commit (cold and warm compile
    caches, say) are kept in `runs`, newest last, at most five. "The same files" is the staleness
    rule's: a receipt from before [expect] left the digest still counts when it is current."""
    runs = []
    if path.is_file():
        old = json.loads(path.read_text())
        same = "hashes" in old and not stale_files(old, pack) and old.get("target") == receipt["target"]
        if same and old.get("verdict") == receipt["verdict"]:
            runs = old.get("runs") or [_run_record(old)]
    receipt["runs"] = [*runs, _run_record(receipt)][-5:]
    validate(receipt, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(receipt, indent=2, sort_keys=True) + "\n")
    return path


def validate(receipt: dict[str, Any], where: Path) -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(receipt), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        raise ReceiptError(f"{where}: field '{'.'.join(map(str, e.absolute_path)) or '(top)'}': {e.message}")


def stale_files(receipt: dict[str, Any], pack: Pack) -> list[str]:
    """Files whose current hash differs from the receipt's. pack.toml also matches under the older rule
    that still hashed [expect]: a receipt written then stays current while the file, [expect] included,
    is unchanged, or when the only change is an [expect] table added where there was none."""
    now = current_hashes(pack)
    older = {**now, "pack.toml": manifest_digest(pack.manifest_path, with_expect=True)}
    return [name for name in now if receipt["hashes"].get(name) not in (now[name], older[name])]


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def load_all(layout: Layout) -> dict[Path, dict[str, Any]]:
    if not layout.evidence.is_dir():
        return {}
    return {p: json.loads(p.read_text()) for p in sorted(layout.evidence.glob("*.json"))}


def latest_for(pack: Pack, layout: Layout) -> dict[str, Any] | None:
    path = receipt_path(pack, None, layout)
    return json.loads(path.read_text()) if path.is_file() else None
