"""One pack, one upstream ref: sources -> clean and patched copies -> reproducer on each -> verdict.
A contract pack (kind parity/perf) has no patch: one "contract" stage on the clean tree -> HELD / BROKEN."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.layout import Layout
from ..core.manifest import Pack
from ..envs import probe as environment
from ..envs import wheelsite
from ..sources import companions, patching
from ..sources import upstream as sources
from . import execution, importing, sentinels, verdicts

Progress = Callable[[str], None]
LATEST_RELEASE = "latest-release"  # --upstream latest-release: the newest release on the package index


@dataclass
class RunOptions:
    cache_dir: Path
    run_dir: Path
    layout: Layout = field(default_factory=Layout)
    upstream_ref: str | None = None
    check_only: bool = False
    keep: bool = False
    timeout_s: int | None = None
    source_dir: Path | None = None
    source_kind: str = "auto"  # auto | git | sdist
    python: str = sys.executable
    extra_pythonpath: list[Path] = field(default_factory=list)  # an offline bundle's wheel tree
    bundle: dict[str, Any] | None = None  # what --offline ran from
    wheel_archives: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)  # --offline: compiler packs
    companion_roots: tuple[Path, ...] = ()  # set once per run by _prepare_stages (bisect: once per bisect)
    jobs: int = 1  # --jobs: packs run side by side on this machine (recorded in results and receipts)


@dataclass
class StageRecord:
    name: str
    sentinel: str | None
    extra_sentinels: list[str]
    evidence: dict[str, Any] | None
    exit_code: int | None
    timed_out: bool
    duration_s: float
    error: str | None
    log: str
    compile_caches: dict[str, str] | None = None  # kernel-compiler caches before this stage: cold or warm

    def outcome(self) -> verdicts.StageOutcome:
        return verdicts.StageOutcome(self.sentinel, self.timed_out, self.error)


@dataclass
class PackResult:
    pack: str
    id: str
    title: str
    repo: str
    ref: str
    upstream_ref: str | None
    commit: str | None
    verdict: str
    reason: str
    expected: list[str]
    as_expected: bool
    source: dict[str, Any] | None = None
    companions: list[dict[str, Any]] | None = None  # other upstream sources imported, unpatched (pack.toml)
    patch: dict[str, Any] | None = None
    stages: list[StageRecord] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    started_at: str = ""
    log_dir: str = ""
    bundle: dict[str, Any] | None = None
    repeat: dict[str, Any] | None = None  # --repeat N: the runs' verdicts and any differences
    jobs: int = 1  # how many packs shared the machine with this one's run (1: it ran alone)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def where(self) -> str:
        """'ref @ commit' (or the release, for an sdist)."""
        return f"{self.ref} @ {(self.commit or '')[:12] or (self.source or {}).get('sdist') or '?'}"


class _Stop(Exception):
    """Ends a pack's pipeline early with a verdict (skip, error)."""

    def __init__(self, verdict: str, reason: str):
        super().__init__(reason)
        self.verdict, self.reason = verdict, reason


def run_pack(pack: Pack, opts: RunOptions, progress: Progress) -> PackResult:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    pack_dir = opts.run_dir / pack.name
    result = PackResult(
        pack=pack.name, id=pack.id, title=pack.title, repo=pack.repo,
        ref=opts.upstream_ref or pack.base_ref, upstream_ref=opts.upstream_ref, commit=None,
        verdict=verdicts.ERROR, reason="", expected=[], as_expected=False,
        started_at=started, log_dir=str(pack_dir), bundle=opts.bundle, jobs=opts.jobs,
    )
    if pack.is_contract:  # the pinned base is a ref like any other: [expect] may name it
        result.expected = list(verdicts.expected_contract(pack.expect, result.ref, opts.check_only))
    elif pack.is_compiler and _no_release_at(pack, opts.upstream_ref):
        result.expected = [verdicts.SKIPPED]  # by design (see _run), so a --strict nightly stays green
    else:
        result.expected = list(verdicts.expected(pack.expect, opts.upstream_ref, opts.check_only, pack.base_ref))
    say = lambda msg: progress(f"[{pack.id}] {msg}")  # noqa: E731
    try:
        if pack.retired:
            raise _Stop(verdicts.SKIPPED, f"retired: {pack.retired}")
        _run(pack, opts, result, pack_dir, say)
    except _Stop as stop:
        result.verdict, result.reason = stop.verdict, stop.reason
    except sources.SourceUnreachable as exc:
        result.verdict, result.reason = verdicts.SKIPPED, f"upstream sources cannot be reached here: {exc}"
    except sources.NotApplicable as exc:
        result.verdict, result.reason = verdicts.SKIPPED, str(exc)
    except (sources.SourceError, importing.ImportSetupError) as exc:
        result.verdict, result.reason = verdicts.ERROR, f"pack {pack.name}: {exc}"
    finally:
        if not opts.keep:
            sources.remove_tree(pack_dir / "work")
    result.durations["total_s"] = round(time.monotonic() - t0, 2)
    result.as_expected = result.verdict in result.expected
    return result


# --jobs runs packs in threads; the pristine cache (sources, companions, wheel sites) is written one
# acquisition at a time (--bisect-jobs writes its trees under it too), and only the reproducers run side by side.
CACHE_LOCK = threading.RLock()


def _acquire(pack: Pack, opts: RunOptions, say: Progress) -> sources.Source:
    if opts.source_dir:
        return sources.acquire_local(pack.repo, opts.source_dir)
    if opts.upstream_ref == LATEST_RELEASE:
        return sources.acquire_latest_release(pack, opts.cache_dir, say)
    if opts.upstream_ref:
        if opts.source_kind == "sdist":
            raise sources.SourceError("--upstream names a git ref; --source-kind sdist cannot serve it")
        commit, how = sources.resolve_ref(pack.repo, opts.upstream_ref, opts.cache_dir, say)
        return sources.acquire_git(pack.repo, opts.upstream_ref, commit, how, pack.source_paths,
                                   opts.cache_dir, say)
    return sources.acquire_base(pack, opts.cache_dir, opts.source_kind, say)


def _no_release_at(pack: Pack, upstream_ref: str | None) -> bool:
    """A compiler pack at a ref without a release it names (anything but its base and fixed release)."""
    return upstream_ref not in (None, pack.compiler.fixed_release)


def _run(pack: Pack, opts: RunOptions, result: PackResult, pack_dir: Path, say: Progress) -> None:
    if pack.is_compiler and _no_release_at(pack, opts.upstream_ref):
        raise sources.NotApplicable(
            f"pack {pack.name} is a compiler pack: its stages import released {pack.compiler.package} wheels; "
            f"{opts.upstream_ref} has no release the pack names (only {pack.compiler.fixed_release}), and a source "
            f"build of the compiler is not done here")
    t = time.monotonic()
    with CACHE_LOCK:
        source = _acquire(pack, opts, say)
    result.source = source.record()
    result.commit = source.commit
    result.durations["acquire_s"] = round(time.monotonic() - t, 2)

    work = pack_dir / "work"
    sources.remove_tree(work)
    work.mkdir(parents=True)
    if pack.is_contract:
        _run_contract(pack, opts, result, source, pack_dir, say)
        return
    if pack.is_compiler:
        _run_compiler(pack, opts, result, source, pack_dir, say)
        return
    say("preparing clean and patched work copies")
    clean_tree = sources.work_copy(source, work / "clean")
    patched_tree = None
    patch = patching.PatchResult("no_patch")
    if pack.has_patch:
        if not pack.patch_path.is_file():
            raise _Stop(verdicts.ERROR, f"pack {pack.name}: patch {pack.patch_path} is missing")
        patched_tree = sources.work_copy(source, work / "patched")
        patch = patching.apply(patched_tree, pack.patch_path)
        say(f"patch: {patch.status}" + (f" ({'; '.join(patch.failures)})" if patch.failures else ""))
    result.patch = {"status": patch.status, "method": patch.method, "files": patch.files,
                    "failures": patch.failures}

    if opts.check_only:
        verdict = {"applied": verdicts.CHECKED, "already_applied": verdicts.ALREADY_APPLIED,
                   "conflict": verdicts.PATCH_CONFLICT, "no_patch": verdicts.CHECKED}[patch.status]
        reason = {"applied": "sources fetched and the patch applies cleanly",
                  "already_applied": "the patch is already in upstream at this ref",
                  "conflict": "the patch does not apply: " + "; ".join(patch.failures),
                  "no_patch": "sources fetched (this pack has no patch)"}[patch.status]
        raise _Stop(verdict, reason)

    artifacts, timeout, opts = _prepare_stages(pack, opts, result, pack_dir, say)
    clean = _stage("clean", clean_tree, pack, opts, pack_dir, artifacts, timeout, source, say)
    result.stages.append(clean)
    patched = None
    # An INCONCLUSIVE clean stage measured something without a conclusion (a precision claim whose
    # effect stays under its threshold): the patched stage still runs, so the report shows both sides.
    if clean.sentinel in ("BUG_REPRODUCED", "INCONCLUSIVE") and patch.status == "applied" and patched_tree:
        patched = _stage("patched", patched_tree, pack, opts, pack_dir, artifacts, timeout, source, say)
        result.stages.append(patched)
    result.verdict, result.reason = verdicts.classify(
        clean.outcome(), patch.status, patched.outcome() if patched else None)
    if result.verdict == verdicts.PATCH_CONFLICT:
        result.reason += ": " + "; ".join(patch.failures)


def _run_contract(pack: Pack, opts: RunOptions, result: PackResult, source: sources.Source, pack_dir: Path,
                  say: Progress) -> None:
    """A contract pack: no patch, one stage ("contract") on the clean tree at the ref -> HELD / BROKEN."""
    say("preparing the work copy (contract pack: no patch)")
    tree = sources.work_copy(source, pack_dir / "work" / "contract")
    if opts.check_only:
        raise _Stop(verdicts.CHECKED, "sources fetched (contract pack: no patch; the reproducer did not run)")
    artifacts, timeout, opts = _prepare_stages(pack, opts, result, pack_dir, say)
    stage = _stage("contract", tree, pack, opts, pack_dir, artifacts, timeout, source, say)
    result.stages.append(stage)
    result.verdict, result.reason = verdicts.classify_contract(stage.outcome())


def _run_compiler(pack: Pack, opts: RunOptions, result: PackResult, source: sources.Source, pack_dir: Path,
                  say: Progress) -> None:
    """A compiler pack: the clean stage imports the base release's wheels, the "fixed-release" stage the
    first release that contains upstream's fix; the checkout (the compiler's source at the base) is
    recorded but not imported, and nothing is patched."""
    fix = pack.compiler
    say("preparing the work copy (compiler pack: the stages differ by compiler release, not by a patch)")
    tree = sources.work_copy(source, pack_dir / "work" / "clean")
    result.patch = {"status": "no_patch", "method": "compiler release", "files": [], "failures": [],
                    "fixed_release": fix.fixed_release, "fixed_wheels": list(fix.fixed_wheels),
                    "fix_commit": fix.fix_commit}
    if opts.check_only:
        raise _Stop(verdicts.CHECKED, f"sources fetched (compiler pack: the fix is {fix.package} "
                                      f"{fix.fixed_release}, no patch; the reproducer did not run)")
    artifacts, timeout, opts = _prepare_stages(pack, opts, result, pack_dir, say)
    prune = pack.bundle_prune
    version = ".".join(result.environment["python"].split(".")[:2])  # the reproducers' Python, as probed
    # at --upstream <fixed release> the one (clean) stage imports that release: FIXED_UPSTREAM when it is fixed
    base_pins = fix.fixed_wheels if opts.upstream_ref == fix.fixed_release else fix.base_wheels
    with CACHE_LOCK:
        base_sites = wheelsite.site(base_pins, prune, opts.cache_dir, version, say, opts.wheel_archives)
    clean = _stage("clean", tree, pack, replace(opts, extra_pythonpath=[*base_sites, *opts.extra_pythonpath]),
                   pack_dir, artifacts, timeout, source, say)
    result.stages.append(clean)
    fixed = None
    if clean.sentinel in ("BUG_REPRODUCED", "INCONCLUSIVE") and opts.upstream_ref is None:
        with CACHE_LOCK:
            fixed_sites = wheelsite.site(fix.fixed_wheels, prune, opts.cache_dir, version, say, opts.wheel_archives)
        fixed_opts = replace(opts, extra_pythonpath=[*fixed_sites, *opts.extra_pythonpath])
        fixed = _stage("fixed-release", tree, pack, fixed_opts, pack_dir, artifacts, timeout, source, say)
        result.stages.append(fixed)
    result.verdict, result.reason = verdicts.classify(clean.outcome(), "applied", fixed.outcome() if fixed else None,
                                                      second=f"the {fix.fixed_release} stage")
    if opts.upstream_ref and result.verdict == verdicts.FIXED_UPSTREAM:
        result.reason = f"the bug's signature is gone with the released {fix.fixed_release} ({base_pins[0]})"
    if result.verdict == verdicts.CONFIRMED:
        result.reason = (f"the bug reproduces with {fix.base_wheels[0]} and is gone with the released "
                         f"{fix.fixed_release} ({fix.fixed_wheels[0]}, which contains {fix.fix_commit[:12]}); "
                         f"validated on that release, not by applying a patch")


def _prepare_stages(pack: Pack, opts: RunOptions, result: PackResult, pack_dir: Path,
                    say: Progress) -> tuple[Path, int, RunOptions]:
    """Probe the environment (SKIPPED when the pack's requirements are unmet), fetch the companion
    sources, empty the artifacts folder; (artifacts, per-stage timeout, opts with the companion roots)."""
    say("probing the environment")
    result.environment, unmet = probe_requirements(pack, opts)
    if unmet:
        raise _Stop(verdicts.SKIPPED, "; ".join(unmet))

    result.environment["compile_caches"] = compile_cache_state()
    opts, acquired = with_companions(pack, opts, say)
    if acquired:
        result.companions = [src.record() for src in acquired]
    artifacts = pack_dir / "artifacts"
    sources.remove_tree(artifacts)  # what the clean stage saves must come from this run's clean stage
    artifacts.mkdir(parents=True)
    return artifacts, opts.timeout_s or pack.timeout_s, opts


def with_companions(pack: Pack, opts: RunOptions, say: Progress) -> tuple[RunOptions, list[sources.Source]]:
    """Fetch the pack's companion sources (from the cache, one acquisition at a time); opts with their
    import roots, which every stage (and every bisect step) puts on PYTHONPATH, and the sources."""
    if not pack.companions:
        return opts, []
    with CACHE_LOCK:
        acquired = companions.acquire(pack, opts.cache_dir, say)
    return replace(opts, companion_roots=companions.import_roots(pack, acquired)), acquired


def probe_requirements(pack: Pack, opts: RunOptions) -> tuple[dict[str, Any], list[str]]:
    """The reproducers' environment (as they will see it) and the pack's requirements it does not meet."""
    info = environment.probe(opts.python, environment.dist_names(pack.python_deps), _env_with(opts, []))
    return info, environment.unmet_requirements(info, pack.gpu, pack.min_capability, pack.gpus, pack.python_deps)


def compile_cache_state() -> dict[str, str]:
    """Whether the kernel compilers' caches held anything before the run: cold runs include compiles."""
    home = Path.home()
    dirs = {"triton": os.environ.get("TRITON_CACHE_DIR") or home / ".triton" / "cache",
            "tilelang": os.environ.get("TILELANG_CACHE_DIR") or home / ".tilelang" / "cache"}
    return {name: ("warm" if Path(d).is_dir() and any(Path(d).iterdir()) else "cold") for name, d in dirs.items()}


def _env_with(opts: RunOptions, first: list[Path]) -> dict[str, str]:
    """os.environ with PYTHONPATH = first, then the bundle's wheels, then what was already set."""
    env = dict(os.environ)
    inherited = env.get("PYTHONPATH")
    parts = [str(p) for p in (*first, *opts.extra_pythonpath)] + ([inherited] if inherited else [])
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _stage(name: str, tree: Path, pack: Pack, opts: RunOptions, pack_dir: Path, artifacts: Path,
           timeout: int, source: sources.Source, say: Progress) -> StageRecord:
    # a compiler pack's checkout is the compiler's C++ source at the base: recorded, never imported
    import_paths = () if pack.is_compiler else pack.import_paths
    entries = importing.path_entries(tree, import_paths, pack.skip_init + companions.skip_init(pack),
                                     pack_dir / "work" / f"{name}-site", opts.companion_roots)
    env = _env_with(opts, entries)
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "REPRO_ARTIFACTS": str(artifacts)})
    cwd = pack_dir / "work" / f"{name}-cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    caches = compile_cache_state()
    say(f"running the reproducer on the {name} tree (timeout {timeout}s)")
    header = (f"# pack {pack.name} stage {name}\n# source {source.kind} {source.repo}@{source.commit or source.sdist}"
              f"\n# PYTHONPATH={env['PYTHONPATH']}\n")
    done = execution.run_command([opts.python, str(pack.repro_path)], cwd, env, timeout,
                                 pack_dir / f"{name}.log", header)
    parsed = sentinels.parse(done.stdout, pack.extra_sentinels,
                             sentinels.CONTRACT_SENTINELS if pack.is_contract else sentinels.VERDICT_SENTINELS)
    error = None
    if done.timed_out:
        error = f"timed out after {timeout}s"
    elif done.exit_code != 0:
        tail = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        error = f"exit code {done.exit_code}: {tail[:300]}"
    elif not parsed.ok:
        error = "; ".join(parsed.problems)
    trusted = parsed.sentinel if error is None else None
    say(f"{name}: {trusted or 'no trusted sentinel'} in {done.duration_s:.1f}s" + (f" ({error})" if error else ""))
    return StageRecord(name, trusted, parsed.extras if error is None else [], parsed.evidence, done.exit_code,
                       done.timed_out, round(done.duration_s, 2), error, str(done.log), caches)
