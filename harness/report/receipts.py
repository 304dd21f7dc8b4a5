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
from ..core import fsutil, treehash
from ..core.layout import Layout
from ..core.manifest import Pack
from ..core.model import PackResult, PatchStatus, StageOutcome, Verdict
from ..sources import gitutil

SCHEMA_VERSION = 2  # 2: an integrity digest; 1: sealed in evidence/SEALS.json instead
SEALS = "SEALS.json"


class ReceiptError(Exception):
    pass


@cache
def _schema() -> dict[str, Any]:
    return json.loads(resources.files("harness.core").joinpath("schemas/receipt.schema.json").read_text())


def sha256_file(path: Path) -> str | None:
    """sha256 of a file, read in chunks (bundles hold archives of tens of MiB); None when absent."""
    return treehash.file_sha256(path) if path.is_file() else None


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
    dropped = {b"report", b"tests"} if with_expect else {b"report", b"expect", b"tests"}
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
        if table == b"compiler" and re.match(rb"""^\s*["']?fixed_stack["']?\s*=""", line):
            continue  # the fixed-release stage's stack: how to run it, like [requires].stack
        if not skipping:
            kept.append(line)
    return hashlib.sha256(b"".join(kept)).hexdigest()


def harness_digest() -> str:
    """sha256 over the harness package's files (path and content, sorted): which runner code made a
    receipt, independent of git. A GPU node may hold the collection's files without its current HEAD
    (a node that is sent the files, not .git), so collection_commit alone can name an older commit."""
    root = resources.files("harness")
    digest = hashlib.sha256()
    for path in sorted(Path(str(root)).rglob("*")):
        if path.is_file() and path.suffix in (".py", ".json"):
            digest.update(path.relative_to(Path(str(root))).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def current_hashes(pack: Pack) -> dict[str, str | None]:
    """The files a verdict depends on: pack.toml (less what never changes a verdict), repro.py, the pack's own
    modules that repro.py imports (by file name; only when it has some) and the patch."""
    return {"pack.toml": manifest_digest(pack.manifest_path), "repro.py": sha256_file(pack.repro_path),
            **{p.name: sha256_file(p) for p in pack.module_paths},
            "patch": sha256_file(pack.patch_path) if pack.has_patch else None}


def ref_slug(ref: str) -> str:
    """A file-name-safe form of a ref: its safe characters, cut to 60, with a digest of the whole ref when it was
    cut or changed (two refs never share a receipt name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", ref).strip(".") or "ref"
    if safe == ref and len(ref) <= 60:
        return ref
    return f"{safe[:60]}-{hashlib.sha256(ref.encode()).hexdigest()[:10]}"


def receipt_path(pack: Pack, upstream_ref: str | None, layout: Layout) -> Path:
    if upstream_ref is None:
        return layout.evidence / f"{pack.name}.json"
    return layout.evidence / f"{pack.name}.at-{ref_slug(upstream_ref)}.json"


def build(result: PackResult, pack: Pack, command: list[str], layout: Layout) -> dict[str, Any]:
    if result.verdict in (Verdict.SKIPPED, Verdict.CHECKED, Verdict.ALREADY_APPLIED) or not result.stages:
        raise ReceiptError(f"pack {pack.name}: a {result.verdict} run measured nothing; no receipt written")
    if result.verdict in (Verdict.ERROR, Verdict.TIMEOUT):
        # a fault of the run (a crash, a cut-off stage) is not a record of the pack's finding, and must not
        # replace one that is: its log stays under the run folder
        raise ReceiptError(f"pack {pack.name}: a {result.verdict} run is a fault of the run, not a finding; no "
                           f"receipt written (its logs: {result.log_dir or 'the run folder'})")
    src = result.source or {}
    try:
        head = gitutil.git(["rev-parse", "HEAD"], cwd=layout.root).strip()
        dirty = bool(gitutil.git(["status", "--porcelain", "--untracked-files=no"], cwd=layout.root).strip())
    except Exception:  # noqa: BLE001 - a collection copied without .git still gets a receipt
        head, dirty = None, None
    return {
        "schema_version": SCHEMA_VERSION,
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
        **({"upstream_tests": result.upstream_tests} if result.upstream_tests else {}),
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
    receipt.pop("integrity", None)
    receipt["integrity"] = {"sha256": integrity_digest(receipt),
                            "covers": "the whole receipt but this field, as canonical JSON (sorted keys)"}
    validate(receipt, path)
    fsutil.atomic_write(path, json.dumps(receipt, indent=2, sort_keys=True) + "\n")
    return path


def integrity_digest(receipt: dict[str, Any]) -> str:
    """sha256 of the receipt without its `integrity` field, as canonical JSON: a hand edit of any measured
    number, sentinel or verdict no longer matches it."""
    body = {k: v for k, v in receipt.items() if k != "integrity"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seals(layout: Layout) -> dict[str, str]:
    """evidence/SEALS.json: the digests of receipts written before receipts carried their own (schema 1)."""
    return fsutil.read_json(layout.evidence / SEALS)


def problems(path: Path, receipt: dict[str, Any], pack: Pack, layout: Layout) -> list[str]:
    """Why a committed receipt is not a true record of a run of the current files (empty: it is): it must
    validate, hold the files' current hashes, be unedited since the runner wrote it, and its verdict must be
    the one the stored stage outcomes give under the pack's plan."""
    found = []
    try:
        validate(receipt, path)
    except ReceiptError as exc:
        found.append(str(exc))
    stale = stale_files(receipt, pack)
    if stale:
        found.append(f"{path.name}: stale, {', '.join(stale)} changed since the run")
    digest = integrity_digest(receipt)
    if receipt.get("schema_version", 1) >= 2:
        if (receipt.get("integrity") or {}).get("sha256") != digest:
            found.append(f"{path.name}: edited since the runner wrote it (its integrity digest does not match)")
    elif seals(layout).get(path.name) != digest:
        found.append(f"{path.name}: edited since it was sealed in {SEALS} (or never sealed)")
    derived = derived_verdict(receipt, pack)
    if derived is not None and derived != receipt.get("verdict"):
        found.append(f"{path.name}: says {receipt.get('verdict')}, but its stage outcomes give {derived}")
    return found


def derived_verdict(receipt: dict[str, Any], pack: Pack) -> str | None:
    """The verdict the receipt's own stage outcomes give under the pack's plan at the receipt's ref."""
    from ..run import kinds  # noqa: PLC0415 - report reads run's plans only here

    try:
        plan = kinds.plan_for(pack, receipt["target"].get("upstream_ref"))
    except kinds.NotApplicable:
        return None
    outcomes = [StageOutcome(s.get("sentinel"), bool(s.get("timed_out")), s.get("error")) for s in receipt["stages"]]
    if not outcomes or receipt.get("repeat", {}) and receipt["verdict"] == Verdict.FLAKY:
        return None
    status = (receipt.get("patch") or {}).get("status", PatchStatus.NO_PATCH)
    verdict = plan.classify(outcomes, status, pack)[0]
    if verdict == Verdict.CONFIRMED and (receipt.get("upstream_tests") or {}).get("newly_failing"):
        return str(Verdict.FIX_FAILED)  # the patch broke upstream tests that pass on the clean tree
    return str(verdict)


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
    return {p: json.loads(p.read_text()) for p in sorted(layout.evidence.glob("*.json")) if p.name != SEALS}


def latest_for(pack: Pack, layout: Layout) -> dict[str, Any] | None:
    path = receipt_path(pack, None, layout)
    return json.loads(path.read_text()) if path.is_file() else None
