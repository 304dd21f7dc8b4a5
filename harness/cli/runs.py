"""Running the selected packs: one at a time, or J side by side (threads: each runs its stages as
subprocesses), longest first by the durations their receipts recorded, then the packs whose verdict
depends on timings ([run] exclusive) alone. An interrupt stops the running stages; packs not started are
reported as not run. Results keep the packs' order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace

from ..core.layout import Layout
from ..core.manifest import Pack
from ..core.model import PackResult, Verdict
from ..report import receipts
from ..run import execution, repeat
from ..run.pipeline import RunOptions, expected_for, run_pack


def recorded_seconds(pack: Pack, layout: Layout) -> float:
    """The pack's last recorded wall time (its receipt), for scheduling; 0 when there is none."""
    try:
        receipt = receipts.latest_for(pack, layout)
    except (OSError, ValueError):
        return 0.0
    return float(((receipt or {}).get("durations") or {}).get("total_s") or 0.0)


def longest_first(packs: list[Pack], layout: Layout) -> list[Pack]:
    return sorted(packs, key=lambda p: -recorded_seconds(p, layout))


def not_run(pack: Pack, opts: RunOptions) -> PackResult:
    ref = opts.upstream_ref or pack.base_ref
    expected = expected_for(pack, opts, ref)
    return PackResult(pack.name, pack.id, pack.title, pack.repo, ref, opts.upstream_ref, None, Verdict.ERROR,
                      "not run: the run was interrupted before this pack started", expected, False,
                      log_dir=str(opts.run_dir / pack.name))


def run_all(packs: list[Pack], opts: RunOptions, args, layout: Layout, progress) -> list[PackResult]:
    done: dict[str, PackResult] = {}
    try:
        if args.jobs <= 1:
            for pack in packs:
                done[pack.name] = _run_one(pack, opts, args, progress)
        else:
            shared = [p for p in packs if not p.exclusive]
            together = replace(opts, jobs=min(args.jobs, len(shared)) or 1)
            with ThreadPoolExecutor(args.jobs) as pool:
                futures = {pool.submit(_run_one, p, together, args, progress): p
                           for p in longest_first(shared, layout)}
                try:
                    wait(futures)
                except KeyboardInterrupt:
                    execution.STOP.set()
                    for future in futures:
                        future.cancel()
                    wait([f for f in futures if not f.cancelled()])
                for future, pack in futures.items():
                    if future.done() and not future.cancelled():
                        done[pack.name] = future.result()
            for pack in (p for p in packs if p.exclusive):
                if execution.STOP.is_set():
                    break
                progress(f"[{pack.id}] runs alone ([run] exclusive): its verdict depends on timings")
                done[pack.name] = _run_one(pack, opts, args, progress)
    except KeyboardInterrupt:
        execution.STOP.set()
    return [done.get(p.name) or not_run(p, opts) for p in packs]


def _run_one(pack: Pack, opts: RunOptions, args, progress) -> PackResult:
    if args.repeat <= 1:
        return run_pack(pack, opts, progress)
    runs = [run_pack(pack, replace(opts, run_dir=opts.run_dir / f"repeat-{i + 1}"), progress)
            for i in range(args.repeat)]
    return repeat.combine(runs, args.repeat_rtol)
