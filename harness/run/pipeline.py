"""One pack at one upstream ref: sources -> work copies (and the patch) -> the plan's stages, each in its
stack's environment -> one verdict. The plan (run/kinds.py) says which stages a pack's kind has; this is
the one loop that runs them, under the same trust rules for every kind.

Nothing a pack does can stop the run: any fault while preparing, running or reading one pack becomes that
pack's ERROR with a one-line reason (and, for a fault of the runner itself, the traceback in the pack's
log folder). After each stage the pristine sources, the other stage's tree and the environment are
checked: a reproducer that wrote outside its own work tree is an ERROR naming the path."""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core import fsutil, treehash
from ..core.layout import Layout, default_env_dir
from ..core.manifest import Pack
from ..core.model import PackResult, PatchStatus, StageRecord, Verdict
from ..envs import locks, probe, probe_cache, provision
from ..envs.provision import Env, EnvError, EnvUnavailable
from ..sources import companions, importing, patching, upstream
from . import execution, kinds, sentinels, upstream_tests, verdicts
from .kinds import Plan, StageSpec

Progress = upstream.Progress
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
    python: str = sys.executable  # the reproducers' interpreter (an environment's base)
    env_mode: str = "auto"  # auto: each stage in its stack's locked environment; host: `python` as it is
    env_dir: Path = field(default_factory=default_env_dir)
    units: provision.UnitSource | None = None  # where environments' units come from (None: the package index)
    bundle: dict[str, Any] | None = None  # what --offline ran from
    offline: bool = False  # sources and units only from the bundle
    upstream_tests: bool = False  # also run the tests each pack names in [tests], on its clean and patched trees
    companion_roots: tuple[Path, ...] = ()  # set once per run by prepare (bisect: once per bisect)
    jobs: int = 1  # --jobs: packs run side by side on this machine (recorded in results and receipts)

    def unit_source(self) -> provision.UnitSource:
        return self.units or provision.IndexSource(self.env_dir / "store")


class _Stop(Exception):
    """Ends a pack's pipeline early with a verdict (skip, error)."""

    def __init__(self, verdict: str, reason: str):
        super().__init__(reason)
        self.verdict, self.reason = verdict, reason


class Interrupted(Exception):
    """SIGINT or SIGTERM: the running stage was stopped."""


# --jobs runs packs in threads; the pristine cache (sources, companions) is written one acquisition at a
# time (--bisect-jobs writes its trees under it too), and only the reproducers run side by side.
CACHE_LOCK = threading.RLock()
_MACHINE: dict[str, dict] = {}  # per run: nvidia-smi's GPUs and each interpreter's runtime, looked at once
_MACHINE_LOCK = threading.Lock()
_LOOKING: dict[str, threading.Lock] = {}  # one lock a key: two environments' probes run side by side


def _machine(key: str, look) -> dict:
    with _MACHINE_LOCK:
        if key in _MACHINE:
            return _MACHINE[key]
        looking = _LOOKING.setdefault(key, threading.Lock())
    with looking:
        with _MACHINE_LOCK:
            if key in _MACHINE:
                return _MACHINE[key]
        found = look()
        with _MACHINE_LOCK:
            _MACHINE[key] = found
        return found


def expected_for(pack: Pack, opts: RunOptions, ref: str) -> list[str]:
    if pack.is_contract:  # the pinned base is a ref like any other: [expect] may name it
        return list(verdicts.expected_contract(pack.expect, ref, opts.check_only))
    if pack.is_compiler and opts.upstream_ref not in (None, pack.compiler.fixed_release):
        return [Verdict.SKIPPED]  # by design (kinds.plan_for), so a --strict nightly stays green
    return list(verdicts.expected(pack.expect, opts.upstream_ref, opts.check_only, pack.base_ref))


def run_pack(pack: Pack, opts: RunOptions, progress: Progress) -> PackResult:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    pack_dir = opts.run_dir / pack.name
    ref = opts.upstream_ref or pack.base_ref
    result = PackResult(
        pack=pack.name, id=pack.id, title=pack.title, repo=pack.repo, ref=ref, upstream_ref=opts.upstream_ref,
        commit=None, verdict=Verdict.ERROR, reason="", expected=expected_for(pack, opts, ref), as_expected=False,
        started_at=started, log_dir=str(pack_dir), bundle=opts.bundle, jobs=opts.jobs,
    )
    say = lambda msg: progress(f"[{pack.id}] {msg}")  # noqa: E731
    phase = ["starting"]
    try:
        if execution.STOP.is_set():
            raise Interrupted("the run was interrupted before this pack started")
        if pack.retired:
            raise _Stop(Verdict.SKIPPED, f"retired: {pack.retired}")
        _run(pack, kinds.plan_for(pack, opts.upstream_ref), opts, result, pack_dir, say, phase)
    except _Stop as stop:
        result.verdict, result.reason = stop.verdict, stop.reason
    except (kinds.NotApplicable, upstream.NotApplicable) as exc:
        result.verdict, result.reason = Verdict.SKIPPED, str(exc)
    except upstream.SourceUnreachable as exc:
        result.verdict, result.reason = Verdict.SKIPPED, f"upstream sources cannot be reached here: {exc}"
    except EnvUnavailable as exc:
        result.verdict, result.reason = Verdict.SKIPPED, str(exc)
    except (upstream.SourceError, importing.ImportSetupError, EnvError, locks.StackError) as exc:
        result.verdict, result.reason = Verdict.ERROR, f"pack {pack.name} ({phase[0]}): {exc}"
    except (Interrupted, KeyboardInterrupt) as exc:
        result.verdict, result.reason = Verdict.ERROR, f"interrupted ({phase[0]}): {exc or 'SIGINT'}"
    except Exception as exc:  # noqa: BLE001 - a fault of one pack must not stop the run
        where = _write_traceback(pack_dir)
        result.verdict = Verdict.ERROR
        result.reason = (f"pack {pack.name}: internal error while {phase[0]}: {type(exc).__name__}: "
                         f"{str(exc)[:300]} (traceback: {where})")
    finally:
        if not opts.keep:
            try:
                fsutil.remove_tree(pack_dir / "work")
                if pack_dir.is_dir() and not any(pack_dir.iterdir()):
                    pack_dir.rmdir()  # nothing ran: no empty log folder to point at
            except OSError:
                pass
    result.durations["total_s"] = round(time.monotonic() - t0, 2)
    result.as_expected = result.verdict in result.expected
    return result


def _write_traceback(pack_dir: Path) -> str:
    try:
        pack_dir.mkdir(parents=True, exist_ok=True)
        (pack_dir / "error.log").write_text(traceback.format_exc())
        return str(pack_dir / "error.log")
    except OSError:
        return "not written"


def acquire(pack: Pack, opts: RunOptions, say: Progress) -> upstream.Source:
    if opts.source_dir:
        return upstream.acquire_local(pack.repo, opts.source_dir)
    if opts.upstream_ref == LATEST_RELEASE:
        return upstream.acquire_latest_release(pack, opts.cache_dir, say)
    if opts.upstream_ref:
        if opts.source_kind == "sdist":
            raise upstream.SourceError("--upstream names a git ref; --source-kind sdist cannot serve it")
        commit, how = upstream.resolve_ref(pack.repo, opts.upstream_ref, opts.cache_dir, say)
        return upstream.acquire_git(pack.repo, opts.upstream_ref, commit, how, pack.source_paths,
                                    opts.cache_dir, say)
    return upstream.acquire_base(pack, opts.cache_dir, opts.source_kind, say)


def _run(pack: Pack, plan: Plan, opts: RunOptions, result: PackResult, pack_dir: Path, say: Progress,
         phase: list[str]) -> None:
    phase[0] = "getting the upstream sources"
    t = time.monotonic()
    with CACHE_LOCK:
        source = acquire(pack, opts, say)
    result.source = source.record()
    result.commit = source.commit
    result.durations["acquire_s"] = round(time.monotonic() - t, 2)

    phase[0] = "preparing the work copies"
    work = pack_dir / "work"
    fsutil.remove_tree(work)
    work.mkdir(parents=True)
    trees = {"clean": upstream.work_copy(source, work / "clean")}
    patch = patching.PatchResult(PatchStatus.NO_PATCH)
    if pack.has_patch:
        if not pack.patch_path.is_file():
            raise _Stop(Verdict.ERROR, f"pack {pack.name}: patch {pack.patch_path} is missing")
        patched = upstream.work_copy(source, work / "patched")
        patch = patching.apply(patched, pack.patch_path)
        if patch.status == PatchStatus.INVALID:
            raise _Stop(Verdict.ERROR, f"pack {pack.name}: its patch is refused before anything runs: "
                                       + "; ".join(patch.failures[:3]))
        if patch.status == PatchStatus.APPLIED:
            trees["patched"] = patched
        say(f"patch: {patch.status}" + (f" ({'; '.join(patch.failures)})" if patch.failures else ""))
    if pack.has_patch:
        result.patch = {"status": str(patch.status), "method": patch.method, "files": patch.files,
                        "failures": patch.failures}
    if pack.is_compiler:
        result.patch = {"status": str(patch.status), "files": [], "failures": []}
        fix = pack.compiler
        result.patch.update({"method": "compiler release", "fixed_release": fix.fixed_release,
                             "fixed_wheels": list(fix.fixed_wheels), "fix_commit": fix.fix_commit})
    if opts.check_only:
        verdict, reason = plan.check(patch.status, pack)
        if patch.failures:
            reason += ": " + "; ".join(patch.failures)
        raise _Stop(verdict, reason)

    phase[0] = "checking this machine"
    unmet = machine_unmet(pack, opts)
    if unmet:
        raise _Stop(Verdict.SKIPPED, skip_reason(pack, opts, unmet))
    opts, acquired = with_companions(pack, opts, say)
    if acquired:
        result.companions = [src.record() for src in acquired]
    artifacts = pack_dir / "artifacts"
    fsutil.remove_tree(artifacts)  # what the clean stage saves must come from this run's clean stage
    artifacts.mkdir(parents=True)
    timeout = opts.timeout_s or pack.timeout_s

    outcomes = []
    for spec in plan.stages:
        if not kinds.should_run(spec, outcomes, patch.status):
            continue
        phase[0] = f"preparing the {spec.name} stage's environment"
        env = stage_env(pack, spec, opts, say)
        if not result.environment:
            result.environment = env_probe(pack, env, opts)
            result.environment["compile_caches"] = compile_cache_state()
        _check_probe(pack, opts, result.environment, env)
        phase[0] = f"running the {spec.name} stage"
        others = {name: tree for name, tree in trees.items() if tree != trees[spec.tree]}
        record = run_stage(spec, trees[spec.tree], pack, plan, opts, pack_dir, artifacts, timeout, source, env, say,
                           guard=Guard(source, others, acquired, env))
        result.stages.append(record)
        outcomes.append(record.outcome())
        if execution.STOP.is_set():
            raise Interrupted(f"the {spec.name} stage was stopped")
    result.verdict, result.reason = plan.classify(outcomes, patch.status, pack)
    if result.verdict == Verdict.PATCH_CONFLICT:
        result.reason += ": " + "; ".join(patch.failures)
    if opts.upstream_tests and pack.tests and "patched" in trees:
        phase[0] = "running upstream's tests"
        say(f"upstream tests ({', '.join(pack.tests)}) on the clean and patched trees")
        env = stage_env(pack, plan.stages[0], opts, say)
        runs = {name: upstream_tests.run_tests(pack, trees[name], env,
                                               stage_variables(name, trees[name], pack, opts, pack_dir, artifacts, env),
                                               pack_dir, name) for name in ("clean", "patched")}
        result.upstream_tests = upstream_tests.judge(result, runs["clean"], runs["patched"])


# ---------------------------------------------------------------- the machine and the environments


def machine_unmet(pack: Pack, opts: RunOptions) -> list[str]:
    """The cheap look, before anything is provisioned: the GPUs the driver reports (env mode host: the
    interpreter as it is, python_deps included, as the stage will see it)."""
    if opts.env_mode == "host":
        info = probe.for_pack(_host_probe(opts), probe.dist_names(pack.python_deps))
        return probe.unmet_requirements(info, pack.gpu, pack.min_capability, pack.gpus, pack.python_deps)
    gpus = _machine("gpus", probe.gpus)
    if "error" in gpus and pack.gpu:  # no nvidia-smi (some containers): ask the interpreter's torch, if any
        info = _host_probe(opts)
        cuda = info.get("torch", {}).get("cuda", {})
        if cuda.get("available"):
            gpus = {"count": cuda.get("device_count", 1),
                    "gpus": [{"name": cuda.get("device_name"), "capability": cuda.get("capability")}]}
    return probe.gpu_unmet(gpus, pack.gpu, pack.min_capability, pack.gpus)


def _host_probe(opts: RunOptions) -> dict:
    """The interpreter as it is, probed once a run: the record env_probe keeps for a stage run with it."""
    return _machine(f"envprobe:{opts.python}", lambda: probe.probe(opts.python, _host_env()))


def skip_reason(pack: Pack, opts: RunOptions, unmet: list[str]) -> str:
    reason = "; ".join(unmet)
    if opts.env_mode == "auto" and pack.stack:
        reason += (f". Nothing was run on a GPU here; on a machine that has one, `python runner.py --pack {pack.id}` "
                   f"provisions stack {pack.stack} and runs it")
    return reason


def stage_stack(pack: Pack, spec: StageSpec) -> str | None:
    return pack.compiler.fixed_stack if spec.env == "fixed" and pack.compiler else pack.stack


def stage_env(pack: Pack, spec: StageSpec, opts: RunOptions, say: Progress) -> Env:
    stack = stage_stack(pack, spec)
    if opts.env_mode == "host" or stack is None:
        return provision.host_env(opts.python)
    return environment(stack, opts, say)


def environment(stack: str, opts: RunOptions, say: Progress) -> Env:
    """The provisioned environment of `stack` for the reproducers' interpreter (made once, then reused)."""
    host = _machine(f"runtime:{opts.python}", lambda: probe.runtime(opts.python))
    if "error" in host:
        raise EnvError(host["error"])
    platform = locks.host_platform()
    if platform is None:
        raise EnvUnavailable(f"stack {stack} is locked for {', '.join(locks.PLATFORMS)} only; this machine is not one")
    try:
        lock = locks.load(opts.layout, stack, host["python"], platform)
    except locks.StackError as exc:
        raise EnvUnavailable(str(exc)) from exc
    try:
        return provision.provide(lock, opts.python, opts.env_dir, opts.unit_source(), say, host)
    except EnvError:
        raise
    except Exception as exc:  # the index unreachable, offline without the units
        if opts.offline or "unreachable" in str(exc).lower() or "connection" in str(exc).lower():
            raise EnvUnavailable(f"stack {stack}: {exc}") from exc
        raise


def env_probe(pack: Pack, env: Env, opts: RunOptions) -> dict[str, Any]:
    """The full environment record (GPU, torch, versions), probed with the stage's interpreter."""
    variables = {**_stage_base_env(opts, env), **env.variables}

    def look() -> dict:
        if env.path is None:  # the interpreter as it is: nothing tells a later run that it is unchanged
            return probe.probe(env.python, variables)
        digest = probe_cache.key(env.record, env.python, variables, _machine("gpus", probe.gpus),
                                 _machine(f"runtime:{opts.python}", lambda: probe.runtime(opts.python)))
        return probe_cache.probed(opts.env_dir / "probes", env.path.name, digest,
                                  lambda: probe.probe(env.python, variables))

    info = probe.for_pack(_machine(f"envprobe:{env.python}", look), probe.dist_names(pack.python_deps))
    info["environment"] = env.record
    return info


def _check_probe(pack: Pack, opts: RunOptions, info: dict, env: Env) -> None:
    reasons = probe.unmet_requirements(info, pack.gpu, pack.min_capability, pack.gpus,
                                       pack.python_deps if opts.env_mode == "host" or env.path is None else ())
    if reasons:
        raise _Stop(Verdict.SKIPPED, "; ".join(reasons))
    if env.path is not None:
        missing = probe.unmet_requirements({"packages": info.get("packages", {})}, False, None, 0, pack.python_deps)
        if missing:
            raise EnvError(f"the environment of stack {env.record.get('stack')} does not provide what the pack "
                           f"needs ({'; '.join(missing)}): its lock must pin it (python runner.py --lint)")


def with_companions(pack: Pack, opts: RunOptions, say: Progress) -> tuple[RunOptions, list[upstream.Source]]:
    """Fetch the pack's companion sources (from the cache, one acquisition at a time); opts with their
    import roots, which every stage (and every bisect step) puts on PYTHONPATH, and the sources."""
    if not pack.companions:
        return opts, []
    with CACHE_LOCK:
        acquired = companions.acquire(pack, opts.cache_dir, say)
    return replace(opts, companion_roots=companions.import_roots(pack, acquired)), acquired


def compile_cache_state() -> dict[str, str]:
    """Whether the kernel compilers' caches held anything before the run: cold runs include compiles."""
    home = Path.home()
    dirs = {"triton": os.environ.get("TRITON_CACHE_DIR") or home / ".triton" / "cache",
            "tilelang": os.environ.get("TILELANG_CACHE_DIR") or home / ".tilelang" / "cache"}
    return {name: ("warm" if Path(d).is_dir() and any(Path(d).iterdir()) else "cold") for name, d in dirs.items()}


def _host_env() -> dict[str, str]:
    return dict(os.environ)


def _stage_base_env(opts: RunOptions, env: Env) -> dict[str, str]:
    """os.environ for a stage: in a provisioned environment without the caller's PYTHONPATH (it would put
    the caller's packages in front of the locked ones)."""
    base = dict(os.environ)
    if env.path is not None:
        base.pop("PYTHONPATH", None)
        base.pop("PYTHONHOME", None)
    return base


# ---------------------------------------------------------------- one stage


@dataclass
class Guard:
    """What a stage must leave as it found it: the pristine sources, the other stages' trees, the environment."""
    source: upstream.Source
    others: dict[str, Path]
    companions: list[upstream.Source]
    env: Env
    before: dict[str, treehash.Stats] = field(default_factory=dict)

    def arm(self) -> None:
        self.before = {name: treehash.snapshot(tree, skip=frozenset({".git"})) for name, tree in self.others.items()}

    def breaches(self) -> list[str]:
        found = []
        for src in [self.source, *self.companions]:
            found += [f"the pristine source {src.tree}: {p}" for p in upstream.verify(src)[:3]]
        for name, tree in self.others.items():
            now = treehash.snapshot(tree, skip=frozenset({".git"}))
            changes = treehash.snapshot_changes(self.before[name], now)[:3]
            found += [f"the {name} work tree {tree}: {p}" for p in changes]
        found += [f"the environment {self.env.path}: {p}" for p in self.env.verify()[:3]]
        return found


def stage_variables(name: str, tree: Path, pack: Pack, opts: RunOptions, pack_dir: Path, artifacts: Path,
                    env: Env) -> dict[str, str]:
    """The environment variables a stage (or upstream's tests on its tree) runs with: the import paths of the
    checkout (and a sitecustomize for skip_init) first on PYTHONPATH, the environment's own variables."""
    # a compiler pack's checkout is the compiler's C++ source at the base: recorded, never imported
    import_paths = () if pack.is_compiler else pack.import_paths
    entries = importing.path_entries(tree, import_paths, pack.skip_init + companions.skip_init(pack),
                                     pack_dir / "work" / f"{name}-site", opts.companion_roots)
    variables = _stage_base_env(opts, env)
    inherited = variables.get("PYTHONPATH")
    variables["PYTHONPATH"] = os.pathsep.join([*map(str, entries), *([inherited] if inherited else [])])
    variables.update(env.variables)
    variables.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "REPRO_ARTIFACTS": str(artifacts)})
    if pack.gpus > 1:  # NVLink multicast off in every process the pack starts, unless the caller set it
        for key, value in MULTI_GPU_DEFAULTS.items():
            variables.setdefault(key, value)
    return variables


# Multi-GPU packs run with NVLink multicast (NVLS) off: it needs fabric support that many hosts lack, and a
# collective that picks it up there fails or hangs, which is not the bug a pack measures.
MULTI_GPU_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def run_stage(spec: StageSpec, tree: Path, pack: Pack, plan: Plan, opts: RunOptions, pack_dir: Path, artifacts: Path,
              timeout: int, source: upstream.Source, env: Env, say: Progress,
              guard: Guard | None = None) -> StageRecord:
    """Run the reproducer once on `tree` in `env`, under the protocol's trust rules."""
    name = spec.name
    variables = stage_variables(name, tree, pack, opts, pack_dir, artifacts, env)
    cwd = pack_dir / "work" / f"{name}-cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    caches = compile_cache_state()
    where = env.record.get("name") or env.record.get("python")
    say(f"running the reproducer on the {name} tree (timeout {timeout}s, environment {where})")
    header = (f"# pack {pack.name} stage {name}\n# source {source.kind} {source.repo}@{source.commit or source.sdist}"
              f"\n# interpreter {env.python}\n# PYTHONPATH={variables['PYTHONPATH']}\n")
    if guard:
        guard.arm()

    def beat(elapsed: float, line: str) -> None:
        shown = "".join(c if c.isprintable() else "?" for c in line.strip())[:120]
        say(f"{name}: running {elapsed:.0f}s; last line: {shown or '(none yet)'}")

    done = execution.run_command([env.python, str(pack.repro_path)], cwd, variables, timeout,
                                 pack_dir / f"{name}.log", header, pack.extra_sentinels, beat)
    parsed = sentinels.parse(done.protocol, pack.extra_sentinels, plan.sentinels)
    error = None
    if done.interrupted:
        error = "interrupted"
    elif done.timed_out:
        error = f"timed out after {timeout}s"
    elif done.exit_code != 0:
        error = f"exit code {done.exit_code}: {done.last_stderr_line[:300]}"
    elif not parsed.ok:
        error = "; ".join(parsed.problems)
    breaches = guard.breaches() if guard else []
    if breaches:
        error = "the reproducer wrote outside its own work tree: " + "; ".join(breaches[:3])
    trusted = parsed.sentinel if error is None else None
    say(f"{name}: {trusted or 'no trusted sentinel'} in {done.duration_s:.1f}s" + (f" ({error})" if error else ""))
    return StageRecord(name, trusted, parsed.extras if error is None else [], parsed.evidence, done.exit_code,
                       done.timed_out, round(done.duration_s, 2), error, str(done.log), caches,
                       env.record if env.path is not None or env.record.get("mode") == "host" else None)


def provision_pack(pack: Pack, opts: RunOptions, progress: Progress) -> list[Env]:
    """--provision: make (or check) every environment the pack's stages run in; no sources, no stages."""
    say = lambda msg: progress(f"[{pack.id}] {msg}")  # noqa: E731
    stacks = []
    for spec in kinds.plan_for(pack, None).stages:
        stack = stage_stack(pack, spec)
        if stack and stack not in stacks:
            stacks.append(stack)
    return [environment(stack, opts, say) for stack in stacks]
