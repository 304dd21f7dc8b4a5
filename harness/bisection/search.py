"""--bisect NN: the upstream commit where a pack's reproducer stops printing BUG_REPRODUCED (upstream
fixed the bug) or starts printing it (a regression), between the pinned base (or --bisect-from) and
upstream main (or --upstream REF). Not named bisect.py: harness/ is sys.path[0] when probe_env.py runs,
and the stdlib's random imports bisect.

Each tested commit runs the reproducer once on its clean tree, exactly as a pipeline's clean stage
does (same import paths and skip_init, timeout, trust rules for sentinels; logs under
runs/<stamp>/<pack>/bisect/<commit>.log). Both ends run first and must differ; a commit whose run gives
no trusted sentinel, or INCONCLUSIVE, is skipped (git bisect's `skip`), and when skips leave more than
one candidate the answer names all of them.

The search walks the far end's first-parent chain itself instead of driving `git bisect run`:
- first parents are the states upstream's main branch was really in; `git bisect` also visits commits
  inside merged branches, which may lack changes main already had (and mark the wrong commit);
- the same walk runs on an offline node, from the bundle's compact history, where the original
  commits do not exist and `git bisect` would only see rewritten shas;
- skips, the "one of these commits" answer and the evidence of each step stay in our own record
  instead of being parsed back out of git's output.
It is a binary search over the chain's positions: log2(N) runs plus the two ends. With --bisect-jobs J
it is a (J+1)-ary search instead: both ends at once, then rounds of J commits run side by side that cut
the open interval into J+1 parts, about log_{J+1}(N) rounds. That is for reproducers whose time goes to
compiling kernels on the CPU (each commit's kernels are new) and whose verdict is numerical: a pack whose
verdict is a timing (kind "perf") must not share the machine, and is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape as esc
from rich.table import Table

from ..core import manifest
from ..core.layout import Layout, default_cache_dir
from ..core.manifest import Pack
from ..core.model import Sentinel
from ..envs import probe
from ..envs.provision import Env, EnvError
from ..offline import boot, bundle
from ..report.markdown import headline
from ..run import kinds, pipeline
from ..sources import importing
from ..sources import upstream as sources
from ..sources.gitutil import GitError
from . import history
from .history import Commit

Progress = Callable[[str], None]
OLD, NEW, SKIP = "old", "new", "skip"
BUG, FIX = Sentinel.BUG_REPRODUCED, Sentinel.FIX_VALIDATED
CONTRACT_BROKEN, CONTRACT_HELD = Sentinel.CONTRACT_BROKEN, Sentinel.CONTRACT_HELD


def sentinel_pair(pack: Pack) -> tuple[str, str]:
    """(the bug's sentinel, the good one): a contract pack (no patch) says BROKEN / HELD instead."""
    return (CONTRACT_BROKEN, CONTRACT_HELD) if pack.is_contract else (BUG, FIX)


EXIT_FOUND, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2


@dataclass
class Tested:
    position: int  # in the chain: 0 is the old end
    sha: str
    subject: str
    date: str
    merge: bool
    state: str  # old | new | skip
    sentinel: str | None  # the trusted verdict sentinel, if any
    evidence: dict[str, Any] | None
    headline: str
    error: str | None
    duration_s: float
    log: str


@dataclass
class BisectResult:
    pack: str
    repo: str
    paths: list[str]
    old: dict[str, Any]  # {"ref", "commit"}
    new: dict[str, Any]
    search: str | None  # fix (BUG_REPRODUCED -> FIX_VALIDATED) | regression (the reverse) | None (stopped);
    # a contract pack: CONTRACT_BROKEN -> CONTRACT_HELD is a fix
    status: str  # found | ambiguous | stopped
    reason: str
    commits: int  # first-parent commits after the old end, up to and including the far end
    found: dict[str, Any] | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    tested: list[Tested] = field(default_factory=list)
    source: str = "online"
    environment: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    duration_s: float = 0.0
    log_dir: str = ""
    jobs: int = 1  # commits tested side by side per round

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the search


def bounds(states: dict[int, str]) -> tuple[int, int]:
    """(last old position before the first new one, first new position)."""
    hi = min(i for i, s in states.items() if s == NEW)
    lo = max(i for i, s in states.items() if s == OLD and i < hi)
    return lo, hi


def next_probe(states: dict[int, str]) -> int | None:
    """The next position to test: the untested one nearest the middle of the open interval (lower
    on a tie); None when every position in between is tested (old/new) or skipped."""
    lo, hi = bounds(states)
    free = [i for i in range(lo + 1, hi) if i not in states]
    if not free:
        return None
    mid = (lo + hi) / 2
    return min(free, key=lambda i: (abs(i - mid), i))


def next_probes(states: dict[int, str], jobs: int) -> list[int]:
    """The next round's positions: next_probe's one for jobs=1; else up to `jobs` untested positions
    that cut the open interval into jobs+1 near-equal parts (all of them when that many are left)."""
    if jobs <= 1:
        return [p] if (p := next_probe(states)) is not None else []
    lo, hi = bounds(states)
    free = [i for i in range(lo + 1, hi) if i not in states]
    if len(free) <= jobs:
        return free
    picked: list[int] = []
    for j in range(1, jobs + 1):
        target = lo + (hi - lo) * j / (jobs + 1)
        picked.append(min((i for i in free if i not in picked), key=lambda i: (abs(i - target), i)))
    return sorted(picked)


def classify(pack: Pack, sentinel: str | None, old_sentinel: str | None) -> str:
    """A tested commit's state: SKIP unless it printed one of the pack's two sentinels; else OLD when it
    printed what the old end printed (or is the old end: old_sentinel None), NEW otherwise."""
    if sentinel is None or sentinel not in sentinel_pair(pack):
        return SKIP
    return OLD if old_sentinel is None or sentinel == old_sentinel else NEW


def run_bisect(pack: Pack, chain: list[Commit], tree_for: Callable[[Commit], sources.Source],
               opts: pipeline.RunOptions, result: BisectResult, progress: Progress) -> BisectResult:
    """Test both ends, then bisect the chain (result.jobs commits per round); fills in and returns result."""
    t0 = time.monotonic()
    say = lambda msg: progress(f"[{pack.id}] {msg}")  # noqa: E731
    pack_dir = opts.run_dir / pack.name
    result.log_dir = str(pack_dir / "bisect")
    result.commits = len(chain) - 1
    try:
        _search(pack, chain, tree_for, opts, result, pack_dir, say)
    finally:
        if not opts.keep:
            sources.remove_tree(pack_dir / "work")
        result.tested.sort(key=lambda t: t.position)
        result.duration_s = round(time.monotonic() - t0, 2)
        (pack_dir / "bisect").mkdir(parents=True, exist_ok=True)
        (pack_dir / "bisect" / "bisect.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return result


def _stop(result: BisectResult, reason: str) -> BisectResult:
    result.status, result.reason = "stopped", reason
    return result


def _search(pack: Pack, chain: list[Commit], tree_for, opts: pipeline.RunOptions, result: BisectResult,
            pack_dir: Path, say: Progress) -> None:
    if pack.retired:
        _stop(result, f"pack {pack.name} is retired: {pack.retired}")
        return
    if len(chain) < 2:
        _stop(result, f"the far end {result.new['ref']} is the old end's own commit: no history to bisect")
        return
    say(f"{len(chain) - 1} first-parent commits from {chain[0].sha[:12]} to {chain[-1].sha[:12]}")
    unmet = pipeline.machine_unmet(pack, opts)
    if unmet:
        _stop(result, "this machine cannot run the reproducer: " + "; ".join(unmet))
        return
    spec = kinds.StageSpec("bisect", "clean", "pack")  # every tested commit is a clean stage
    try:
        env = pipeline.stage_env(pack, spec, opts, say)
    except EnvError as exc:
        _stop(result, f"the reproducer's environment cannot be had here: {exc}")
        return
    result.environment = pipeline.env_probe(pack, env, opts)
    unmet = probe.unmet_requirements(result.environment, pack.gpu, pack.min_capability, pack.gpus,
                                     pack.python_deps if env.path is None else ())
    if unmet:
        _stop(result, "this machine cannot run the reproducer: " + "; ".join(unmet))
        return
    opts, _ = pipeline.with_companions(pack, opts, say)  # the same unpatched companion trees for every commit
    plan = kinds.plan_for(pack, None)

    def one_tree_at_a_time(commit: Commit) -> sources.Source:
        with pipeline.CACHE_LOCK:  # trees come out of one git dir into the cache; only reproducers run side by side
            return tree_for(commit)

    def test(position: int, old_sentinel: str | None) -> Tested:
        tested = _test(pack, plan, env, chain[position], position, one_tree_at_a_time, opts, pack_dir, say,
                       old_sentinel)
        result.tested.append(tested)
        return tested

    def test_all(positions: list[int], old_sentinel: str | None) -> list[Tested]:
        if len(positions) == 1:
            return [test(positions[0], old_sentinel)]
        with ThreadPoolExecutor(len(positions)) as pool:
            return list(pool.map(lambda p: test(p, old_sentinel), positions))

    if result.jobs > 1:  # both ends at once; the far end's state is read against the old end's after
        old_end, new_end = test_all([0, len(chain) - 1], None)
        if old_end.sentinel in sentinel_pair(pack):
            new_end.state = classify(pack, new_end.sentinel, old_end.sentinel)
    else:
        old_end, new_end = test(0, None), None
    old_label = f"the old end ({result.old['ref']} @ {chain[0].sha[:12]})"
    bug, good = sentinel_pair(pack)
    if old_end.sentinel not in (bug, good):
        _stop(result, f"{old_label} gave {_said(old_end)}, not {bug} or {good}: nothing to bisect from")
        return
    old_end.state = OLD
    result.search = "fix" if old_end.sentinel == bug else "regression"
    new_sentinel = good if old_end.sentinel == bug else bug
    new_end = new_end or test(len(chain) - 1, old_end.sentinel)
    new_label = f"the far end ({result.new['ref']} @ {chain[-1].sha[:12]})"
    if new_end.sentinel != new_sentinel:
        if new_end.sentinel == old_end.sentinel:
            what = ("the bug is still live there" if old_end.sentinel == bug
                    else "the behaviour is still correct there")
            _stop(result, f"both ends give {old_end.sentinel}: {what}, so there is no change to find")
        else:
            _stop(result, f"{old_label} gave {old_end.sentinel} but {new_label} gave {_said(new_end)}, "
                          f"not {new_sentinel}: the search needs a trusted {new_sentinel} at the far end")
        result.search = None
        return

    states = {0: OLD, len(chain) - 1: NEW}
    while positions := next_probes(states, result.jobs):
        lo, hi = bounds(states)
        say(f"{hi - lo - 1} commits left between {chain[lo].sha[:12]} and {chain[hi].sha[:12]}; testing "
            + ", ".join(chain[p].sha[:12] for p in positions))
        for position, tested in zip(positions, test_all(positions, old_end.sentinel), strict=True):
            states[position] = tested.state
    lo, hi = bounds(states)
    candidates = chain[lo + 1: hi + 1]
    result.candidates = [c.record() for c in candidates]
    change = f"{'stops' if result.search == 'fix' else 'starts'} printing {bug}"
    if len(candidates) == 1:
        result.status, result.found = "found", candidates[0].record()
        result.reason = (f"{candidates[0].sha[:12]} is the first of the {len(chain) - 1} first-parent commits after "
                         f"{chain[0].sha[:12]} where the reproducer {change}")
        if candidates[0].merge:
            result.reason += (f" (a merge: the change came with one of the commits it merged; "
                              f"`git log {candidates[0].sha[:12]}^1..{candidates[0].sha[:12]}` lists them)")
    else:
        result.status = "ambiguous"
        result.reason = (f"the reproducer {change} in one of these {len(candidates)} commits: the ones before "
                         f"{candidates[-1].sha[:12]} gave no trusted sentinel (skipped), so the run cannot tell which")


def _said(t: Tested) -> str:
    return t.sentinel if t.sentinel and not t.error else f"no trusted sentinel ({t.error})"


def _test(pack: Pack, plan: kinds.Plan, env: Env, commit: Commit, position: int, tree_for, opts: pipeline.RunOptions,
          pack_dir: Path, say: Progress, old_sentinel: str | None) -> Tested:
    """One reproducer run on commit's clean tree; state old/new/skip against the old end's sentinel."""
    def skipped(error: str) -> Tested:
        say(f"{commit.sha[:12]}: skipped ({error})")
        return Tested(position, commit.sha, commit.subject, commit.date, commit.merge, SKIP, None, None, "", error,
                      0.0, "")

    try:
        source = tree_for(commit)
        work = pack_dir / "work" / "bisect"
        work.mkdir(parents=True, exist_ok=True)
        tree = sources.work_copy(source, work / commit.sha)
        artifacts = work / f"{commit.sha}-artifacts"  # every commit is a clean stage: nothing saved before
        artifacts.mkdir()
        timeout = opts.timeout_s or pack.timeout_s
        # the pipeline's own stage runner: same environment, import setup, timeout and sentinel trust rules
        spec = kinds.StageSpec(f"bisect/{commit.sha}", "clean", "pack")
        stage = pipeline.run_stage(spec, tree, pack, plan, opts, pack_dir, artifacts, timeout, source, env, say)
    except (sources.SourceUnreachable, KeyboardInterrupt):
        raise
    except (sources.SourceError, importing.ImportSetupError) as exc:
        return skipped(str(exc))
    if not opts.keep:
        sources.remove_tree(work / commit.sha)
    return Tested(position, commit.sha, commit.subject, commit.date, commit.merge,
                  classify(pack, stage.sentinel, old_sentinel), stage.sentinel,
                  stage.evidence, headline(stage.evidence, pack.headline), stage.error, stage.duration_s, stage.log)


# ---------------------------------------------------------------- output


def print_result(result: BisectResult, console: Console) -> None:
    table = Table(title=esc(f"bisect {result.pack}: {result.old['ref']} .. {result.new['ref']} "
                            f"({result.commits} first-parent commits)"))
    for col in ("#", "commit", "date", "subject", "sentinel", "evidence", "time"):
        table.add_column(col, overflow="fold")
    found = (result.found or {}).get("sha")
    for t in result.tested:
        said = t.sentinel or "-"
        if t.state == SKIP:
            said = f"skip: {t.sentinel or t.error or '?'}"[:80]
        mark = " [bold](found)[/]" if t.sha == found else ""
        table.add_row(str(t.position), t.sha[:12] + mark, t.date[:10], esc(t.subject[:60]), esc(said),
                      esc(t.headline), f"{t.duration_s:.0f}s")
    if result.tested:
        console.print(table)
    if result.status == "found":
        f = result.found
        word = "fixed" if result.search == "fix" else "regressed"
        console.print(f"[bold green]{word} by {f['sha']}[/] ({f['date']})\n  {esc(f['subject'])}", highlight=False)
        console.print(esc(result.reason), highlight=False)
    elif result.status == "ambiguous":
        console.print(f"[yellow]ambiguous:[/] {esc(result.reason)}", highlight=False)
        for c in result.candidates:
            console.print(esc(f"  {c['sha']} {c['date'][:10]} {c['subject']}"), highlight=False)
    else:
        console.print(f"[red]stopped:[/] {esc(result.reason)}", highlight=False)
    console.print(esc(f"logs: {result.log_dir}"), highlight=False)


# ---------------------------------------------------------------- command line


def _pick(chain: list[Commit], ref: str, named: dict[str, str]) -> int | None:
    """A position in a bundled chain for a ref: a name the bundle resolved, a full sha or a prefix."""
    sha = named.get(ref, ref).lower()
    hits = [i for i, c in enumerate(chain) if len(sha) >= 7 and c.sha.startswith(sha)]
    return hits[0] if len(hits) == 1 else None


def cli_run(args, layout: Layout, console: Console, err: Console,
            make_opts: Callable[[Path], pipeline.RunOptions]) -> int:
    """`runner.py --bisect NN [--upstream REF] [--bisect-from REF] [--offline DIR] [--json PATH]`; the command
    line has already refused options that do not apply to it."""
    try:
        pack = manifest.load_pack(manifest.select([args.bisect], layout)[0], layout)
    except manifest.ManifestError as exc:
        err.print(f"[red]error:[/] {esc(str(exc))}")
        return EXIT_USAGE
    if pack.is_compiler:
        err.print(f"[red]error:[/] --bisect {pack.name}: a compiler pack runs released {pack.compiler.package} "
                  f"wheels, and the commits in between have none; bisecting it needs a source build per commit")
        return EXIT_USAGE
    if args.bisect_jobs > 1 and pack.kind == "perf":
        err.print(f"[red]error:[/] --bisect {pack.name} --bisect-jobs {args.bisect_jobs}: this pack's verdict is a "
                  f"timing, and runs that share the machine would change it; bisect it with one job")
        return EXIT_USAGE
    start = time.monotonic()
    progress = lambda msg: err.print(f"[dim]{time.monotonic() - start:6.1f}s[/] {esc(msg)}", highlight=False)  # noqa: E731
    cache = (args.cache_dir or default_cache_dir()).resolve()
    opts = make_opts(cache)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        if args.offline:
            chain, tree_for, result = _offline(pack, args, opts, progress)
        else:
            chain, tree_for, result = _online(pack, args, cache, progress)
    except bundle.BundleError as exc:
        err.print(f"[red]error:[/] {esc(str(exc))}")
        return EXIT_USAGE
    except (sources.SourceError, GitError) as exc:
        err.print(f"[red]error:[/] bisect {pack.name}: {esc(str(exc))}")
        return EXIT_NOT_FOUND
    result.started_at, result.jobs = started, args.bisect_jobs
    try:
        run_bisect(pack, chain, tree_for, opts, result, progress)
    except sources.SourceUnreachable as exc:
        _stop(result, f"upstream sources cannot be reached: {exc}")
    print_result(result, console)
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return EXIT_FOUND if result.status == "found" else EXIT_NOT_FOUND


def _online(pack: Pack, args, cache: Path, progress: Progress):
    far_ref = args.upstream or "main"
    far, how = sources.resolve_ref(pack.repo, far_ref, cache, progress)
    if args.bisect_from:
        old_ref = args.bisect_from
        old, _ = sources.resolve_ref(pack.repo, old_ref, cache, progress)
    else:
        old_ref, old = pack.base_ref, pack.base_commit
    hist = history.online(pack.repo, pack.source_paths, [old, far], cache, progress)
    chain = hist.chain(old, far)
    result = BisectResult(pack.name, pack.repo, list(pack.source_paths), {"ref": old_ref, "commit": old},
                          {"ref": far_ref, "commit": far, "resolution": how}, None, "stopped", "", len(chain) - 1,
                          source=f"online: {hist.git_dir}")
    return chain, (lambda c: hist.source(c, cache, progress)), result


def _offline(pack: Pack, args, opts: pipeline.RunOptions, progress: Progress):
    where = args.offline.resolve()
    opened = bundle.open_bundle(where, progress)  # checks every file's sha256, history included
    opts.units, opts.offline = opened.units, True
    opts.cache_dir = opened.cache  # companions come from the bundle's source cache, as in an --offline run
    opts.bundle = opened.record
    index = history.read_bundle_index(where, pack)
    chain = history.bundled_chain(index)
    named = {index["old"]["ref"]: index["old"]["commit"], index["new"]["ref"]: index["new"]["commit"]}
    old_ref = args.bisect_from or index["old"]["ref"]
    far_ref = args.upstream or index["new"]["ref"]
    lo, hi = _pick(chain, old_ref, named), _pick(chain, far_ref, named)
    for ref, pos in ((old_ref, lo), (far_ref, hi)):
        if pos is None:
            raise sources.SourceError(
                f"the bundle's history runs from {index['old']['ref']} to {index['new']['ref']} "
                f"({chain[0].sha[:12]}..{chain[-1].sha[:12]}); '{ref}' is not one of its commits")
    if lo >= hi:
        raise sources.SourceError(f"'{old_ref}' does not come before '{far_ref}' in the bundled history")
    unpack = boot.unpack_dir(where)
    hist = history.from_bundle(where, index, unpack / "history")
    tree_cache = unpack / "cache"
    result = BisectResult(pack.name, pack.repo, list(index["paths"]), {"ref": old_ref, "commit": chain[lo].sha},
                          {"ref": far_ref, "commit": chain[hi].sha, "resolution": f"bundle {where}"}, None,
                          "stopped", "", hi - lo, source=f"offline bundle {where}")
    return chain[lo:hi + 1], (lambda c: hist.source(c, tree_cache, progress)), result
