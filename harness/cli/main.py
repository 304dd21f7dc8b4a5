"""Command line: parse, dispatch, print, and the exit code (0 = every verdict as expected)."""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..bisection.history import bundle_history
from ..bisection.search import cli_run as bisect_run
from ..checks import lint as lint_mod
from ..container.docker import ContainerError
from ..container.docker import cli_run as docker_run
from ..core import manifest
from ..core.layout import Layout, default_cache_dir
from ..envs import wheels
from ..offline import bundle
from ..report import compare, export, markdown, merge, receipts
from ..report import outputs as reports
from ..run import repeat, verdicts
from ..run.pipeline import RunOptions, run_pack
from ..sources import upstream as sources

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="runner.py",
        description="Show each pack's upstream bug at its pinned base, apply the patch to a fresh copy, "
        "show the fix, and print one verdict per pack.",
    )
    what = p.add_argument_group("what to do")
    what.add_argument("--list", action="store_true", help="list the packs and their latest receipts")
    what.add_argument("--lint", action="store_true", help="check every pack's files, manifest, patch and README")
    what.add_argument("--pack", action="append", default=[], metavar="NN", help="run this pack (repeatable)")
    what.add_argument("--all", action="store_true", help="run every pack")
    what.add_argument("--check", action="store_true",
                      help="CPU only: fetch sources and check the patch applies (contract packs: sources "
                      "only); no reproducer run")
    what.add_argument("--status", action="store_true", help="write STATUS.md from the committed receipts")
    what.add_argument("--report", metavar="NN", help="print the upstream issue/PR body for this pack")
    what.add_argument("--export", nargs=2, metavar=("NN", "DIR"),
                      help="write a self-contained folder for this pack to attach upstream")
    what.add_argument("--merge", nargs="+", type=Path, metavar="RUN.json",
                      help="one report (--json/--junit/--markdown) from several runs' --json reports, each "
                      "pack from the one run that ran it (a nightly run in parts)")
    what.add_argument("--bisect", metavar="NN",
                      help="find the upstream commit between the pack's base and main (or --upstream REF) "
                      "where its reproducer stops (or starts) printing BUG_REPRODUCED")
    what.add_argument("--bisect-from", metavar="REF",
                      help="with --bisect or --bundle-bisect: start from this upstream ref instead of the pinned "
                      "base (a base on a release branch is no ancestor of main)")
    what.add_argument("--bisect-jobs", type=int, default=1, metavar="J",
                      help="with --bisect: test J commits side by side per round (a (J+1)-ary search); for "
                      "reproducers that spend their time compiling, not for timed verdicts")
    where = p.add_argument_group("which upstream code")
    where.add_argument("--upstream", metavar="REF", help="run against this git ref instead of the pinned base")
    where.add_argument("--source", type=Path, metavar="DIR",
                       help="use this local checkout (copied, never modified) instead of fetching")
    where.add_argument("--source-kind", choices=("auto", "git", "sdist"), default="auto",
                       help="auto: git, falling back to the release sdist when git cannot be reached")
    where.add_argument("--cache-dir", type=Path, default=None,
                       help="pristine source cache (default: $REPRO_CACHE_DIR or ~/.cache/upstream-repro)")
    how = p.add_argument_group("how to run")
    how.add_argument("--timeout", type=int, metavar="S", help="per-stage timeout in seconds (default: the pack's)")
    how.add_argument("--keep", action="store_true", help="keep the work copies after the run")
    how.add_argument("--interpreter", default=sys.executable, help="Python interpreter for the reproducers")
    how.add_argument("--docker", action="store_true",
                     help="run the same command inside the pack's stack image (docker/<stack>/) with the GPU; "
                     "builds the image when its context changed (needs the docker extra and a Docker engine)")
    how.add_argument("--run-dir", type=Path, default=None, help="where logs go (default: runs/<timestamp>)")
    how.add_argument("--strict", action="store_true", help="count SKIPPED as unexpected in the exit code")
    how.add_argument("--jobs", type=int, default=1, metavar="J",
                     help="run J packs side by side (they share the machine and its GPU; packs whose verdict "
                     "depends on timings, [run] exclusive, run alone afterwards); results say so")
    how.add_argument("--repeat", type=int, default=1, metavar="N",
                     help="run each pack N times; disagreeing runs make it FLAKY")
    how.add_argument("--repeat-rtol", type=float, default=0.05, metavar="R",
                     help="with --repeat: relative tolerance on evidence numbers (timings are not compared)")
    how.add_argument("--compare", type=Path, metavar="PREV.json",
                     help="fail when a pack changed state since this earlier --json report")
    out = p.add_argument_group("outputs")
    out.add_argument("--json", type=Path, metavar="PATH", help="write results as JSON")
    out.add_argument("--junit", type=Path, metavar="PATH", help="write results as JUnit XML")
    out.add_argument("--markdown", type=Path, metavar="PATH", help="write a status table as markdown")
    out.add_argument("--receipt", action="store_true", help="write evidence/<pack>.json for each run pack")
    off = p.add_argument_group("offline bundles (GPU nodes without network)")
    off.add_argument("--bundle", type=Path, metavar="DIR",
                     help="write an offline bundle for the selected packs (needs the package index)")
    off.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}", metavar="X.Y",
                     help="with --bundle: the GPU node's Python version (default: this one)")
    off.add_argument("--platform", action="append", metavar="TAG",
                     help="with --bundle: wheel platform tags for the node (default: x86_64 manylinux)")
    off.add_argument("--bundle-ref", action="append", default=[], metavar="REF",
                     help="with --bundle: also carry the sources at this upstream ref (repeatable)")
    off.add_argument("--offline", type=Path, metavar="DIR", help="run from a bundle made by --bundle, no network")
    off.add_argument("--bundle-bisect", action="store_true",
                     help="with --bundle: also carry each pack's first-parent history from its base (or "
                     "--bisect-from REF) to main (or --upstream REF), trimmed to [source].paths, for --bisect on "
                     "the node")
    return p


def main(argv: list[str] | None = None, layout: Layout | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    layout = layout or Layout()
    args = build_parser().parse_args(argv)
    # Wide when not a terminal (CI logs), so tables and evidence lines are not folded.
    console = Console(width=None if sys.stdout.isatty() else 200)
    err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
    try:
        if args.docker:  # the same command inside the pack's stack image (harness/container.py)
            try:
                return docker_run(args, build_parser(), layout, lambda m: err.print(f"[dim]docker:[/] {escape(m)}"))
            except ContainerError as exc:
                err.print(f"[red]error:[/] {escape(str(exc))}")
                return EXIT_USAGE
        if not args.bisect and (args.bisect_jobs != 1 or (args.bisect_from and not args.bundle_bisect)):
            err.print("[red]error:[/] --bisect-jobs only goes with --bisect NN, --bisect-from with --bisect NN "
                      "or --bundle-bisect")
            return EXIT_USAGE
        if args.lint:
            return _lint(layout, console)
        if args.list:
            return _list(layout, console)
        if args.status:
            (layout.root / "STATUS.md").write_text(markdown.status(layout))
            console.print("STATUS.md written")
            return EXIT_OK
        if args.merge:
            return _merge(args, layout, console, err)
        if args.report:
            pack = manifest.load_pack(manifest.select([args.report], layout)[0], layout)
            print(markdown.issue_body(pack, receipts.latest_for(pack, layout), layout), end="")
            return EXIT_OK
        if args.bisect:
            return bisect_run(args, layout, console, err)
        if args.export:
            pack = manifest.load_pack(manifest.select([args.export[0]], layout)[0], layout)
            for path in export.export(pack, Path(args.export[1]), layout):
                console.print(f"exported: {path}")
            return EXIT_OK
        if not (args.pack or args.all):
            build_parser().print_usage(sys.stderr)
            err.print("runner.py: say what to do: --list, --lint, --pack NN or --all")
            return EXIT_USAGE
        folders = manifest.discover(layout) if args.all else manifest.select(args.pack, layout)
        packs = [manifest.load_pack(f, layout) for f in folders]
    except manifest.ManifestError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    if args.source and len(packs) != 1:
        err.print("[red]error:[/] --source DIR names one checkout; use it with exactly one --pack")
        return EXIT_USAGE
    if args.jobs < 1 or (args.jobs > 1 and args.bundle):
        err.print("[red]error:[/] --jobs takes 1 or more packs at a time and runs them here (not with --bundle)")
        return EXIT_USAGE
    cache_dir = (args.cache_dir or default_cache_dir()).resolve()
    start = time.monotonic()
    progress = lambda msg: err.print(f"[dim]{time.monotonic() - start:6.1f}s[/] {msg}")  # noqa: E731
    if args.bundle:
        return _bundle(args, packs, cache_dir, progress, console, err)
    extra_path: list[Path] = []
    bundle_info = None
    archives: dict[str, list[tuple[Path, str]]] = {}
    if args.offline:
        try:
            cache_dir, extra_path, manifest_ = bundle.open_bundle(args.offline.resolve(), progress)
        except bundle.BundleError as exc:
            err.print(f"[red]error:[/] {exc}")
            return EXIT_USAGE
        bundle_info = bundle.run_record(args.offline.resolve(), manifest_)
        archives = bundle.wheel_archives(args.offline.resolve(), manifest_)

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    opts = RunOptions(
        cache_dir=cache_dir, run_dir=(args.run_dir or layout.runs / stamp).resolve(),
        layout=layout, upstream_ref=args.upstream, check_only=args.check, keep=args.keep,
        timeout_s=args.timeout, source_dir=args.source, source_kind=args.source_kind, python=args.interpreter,
        extra_pythonpath=extra_path, bundle=bundle_info, wheel_archives=archives,
    )
    results = _run_all(packs, opts, args, progress)

    title = f"upstream-repro: {args.upstream or 'pinned bases'}" + (" (--check)" if args.check else "")
    if args.jobs > 1:
        title += f" ({args.jobs} packs side by side: timings were taken on a shared machine)"
    _write_outputs(args, packs, results, {"argv": argv, "upstream": args.upstream, "check": args.check}, title,
                   console)
    if args.receipt:
        for pack, result in zip(packs, results, strict=True):
            try:
                path = receipts.receipt_path(pack, args.upstream, layout)
                receipts.write(receipts.build(result, pack, ["python", "runner.py", *argv], layout), path, pack)
                console.print(f"receipt written: {path.relative_to(layout.root)}")
            except receipts.ReceiptError as exc:
                err.print(f"[yellow]no receipt:[/] {exc}")
    return _exit_code(args, results, console, err)


def _write_outputs(args, packs, results, meta: dict, title: str, console: Console) -> None:
    """The table on the console, and --json / --junit / --markdown where asked for."""
    reports.print_table(results, console)
    if args.json:
        reports.write_json(results, args.json, meta)
    if args.junit:
        reports.write_junit(results, args.junit)
    if args.markdown:
        args.markdown.write_text(markdown.results_table(list(zip(packs, results, strict=True)), title))


def _exit_code(args, results, console: Console, err: Console) -> int:
    """0 when every verdict is the expected one (and, with --compare, no state changed unexpectedly)."""
    bad = [r for r in results if not r.as_expected and (r.verdict != verdicts.SKIPPED or args.strict)]
    if args.compare:
        changed, news = compare.changes(compare.previous_verdicts(args.compare), results)
        for line in news:
            console.print(f"[cyan]state change (expected):[/] {line}")
        for line in changed:
            console.print(f"[red]state change (unexpected):[/] {line}")
        if changed:
            return EXIT_UNEXPECTED
    skipped = [r for r in results if r.verdict == verdicts.SKIPPED]
    if skipped and not args.strict:
        err.print(f"[yellow]{len(skipped)} pack(s) SKIPPED[/] (see the reasons above; --strict makes that fail)")
    return EXIT_UNEXPECTED if bad else EXIT_OK


def _merge(args, layout: Layout, console: Console, err: Console) -> int:
    """--merge RUN.json ...: the parts' results as one report; exit code as if it had been one run."""
    if not (args.json or args.junit or args.markdown):
        err.print("[red]error:[/] --merge writes a report: name --json, --junit and/or --markdown")
        return EXIT_USAGE
    try:
        meta, results = merge.merge(args.merge)
        packs = [manifest.load_pack(manifest.select([r.pack], layout)[0], layout) for r in results]
    except (merge.MergeError, manifest.ManifestError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return EXIT_USAGE
    title = (f"upstream-repro: {meta['upstream'] or 'pinned bases'} (merged from {len(args.merge)} runs: "
             + ", ".join(p["file"] for p in meta["merged_from"]) + ")")
    _write_outputs(args, packs, results, meta, title, console)
    return _exit_code(args, results, console, err)


def _run_all(packs, opts: RunOptions, args, progress) -> list:
    """Every pack, in order; with --jobs J, the packs that may share the machine J at a time (threads: each
    runs its stages as subprocesses), then the exclusive ones alone. Results keep the packs' order."""
    if args.jobs <= 1:
        return [_run_one(pack, opts, args, progress) for pack in packs]
    shared = [p for p in packs if not p.exclusive]
    alone = [p for p in packs if p.exclusive]
    together = replace(opts, jobs=min(args.jobs, len(shared)) or 1)
    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip([p.name for p in shared], pool.map(lambda p: _run_one(p, together, args, progress), shared),
                        strict=True))
    for pack in alone:
        progress(f"[{pack.id}] runs alone ([run] exclusive): its verdict depends on timings")
        done[pack.name] = _run_one(pack, opts, args, progress)
    return [done[p.name] for p in packs]


def _run_one(pack, opts: RunOptions, args, progress):
    if args.repeat <= 1:
        return run_pack(pack, opts, progress)
    runs = [run_pack(pack, replace(opts, run_dir=opts.run_dir / f"repeat-{i + 1}"), progress)
            for i in range(args.repeat)]
    return repeat.combine(runs, args.repeat_rtol)


def _bundle(args, packs, cache_dir: Path, progress, console: Console, err: Console) -> int:
    try:
        for pack in packs if args.bundle_bisect else []:  # history/ first: bundle.json hashes it too
            index = bundle_history(pack, args.bundle.resolve(), args.upstream or "main", cache_dir, progress,
                                   args.bisect_from)
            start = f"--bisect-from {args.bisect_from}" if args.bisect_from else "the base"
            console.print(f"{pack.name}: history of {start} and {len(index['commits']) - 1} first-parent commits, "
                          f"{index['bundle_bytes'] / 2**20:.2f} MiB (history/{index['bundle']})")
        made = bundle.create(packs, args.bundle.resolve(), args.python,
                             tuple(args.platform) if args.platform else bundle.DEFAULT_PLATFORMS,
                             cache_dir, [*([args.upstream] if args.upstream else []), *args.bundle_ref], progress)
    except (bundle.BundleError, wheels.WheelError, sources.SourceError) as exc:
        err.print(f"[red]error:[/] pack bundle: {exc}")
        return EXIT_USAGE
    size = sum((args.bundle / name).stat().st_size for name in made["files"])
    console.print(f"bundle written: {args.bundle} ({size / 2**20:.1f} MiB, {len(made['files'])} files) for "
                  f"{', '.join(made['packs'])}; wheels: {', '.join(made['wheels']) or 'none'}")
    console.print(f"on the node: python runner.py --offline {args.bundle} " + " ".join(f"--pack {p.id}" for p in packs))
    for pack in packs if args.bundle_bisect else []:
        console.print(f"on the node: python runner.py --offline {args.bundle} --bisect {pack.id}")
    return EXIT_OK


def _lint(layout: Layout, console: Console) -> int:
    problems = lint_mod.lint(layout)
    for p in problems:
        console.print(f"[red]lint:[/] {p}", highlight=False)
    count = len(manifest.discover(layout))
    console.print(f"{count} pack(s) checked, {len(problems)} problem(s)")
    return EXIT_UNEXPECTED if problems else EXIT_OK


def _list(layout: Layout, console: Console) -> int:
    table = Table(title="packs")
    for col in ("id", "pack", "kind", "target", "base", "latest receipt"):
        table.add_column(col, overflow="fold")
    status = EXIT_OK
    for folder in manifest.discover(layout):
        try:
            pack = manifest.load_pack(folder, layout)
        except manifest.ManifestError as exc:
            table.add_row(folder.name[:3], folder.name, "?", "?", "?", f"[red]bad manifest[/]: {exc}")
            status = EXIT_UNEXPECTED
            continue
        receipt = receipts.latest_for(pack, layout)
        if receipt is None:
            seen = "none"
        else:
            stale = receipts.stale_files(receipt, pack)
            gpu = receipt["environment"].get("torch", {}).get("cuda", {}).get("device_name", "no GPU")
            seen = f"{receipt['verdict']} {receipt['date'][:10]} on {gpu}" + (
                f" [red](stale: {', '.join(stale)} changed)[/]" if stale else "")
        base = pack.base_ref + (f" / {pack.sdist}" if pack.sdist else "")
        name = pack.slug + (" [dim](retired)[/]" if pack.retired else "")
        table.add_row(pack.id, name, pack.kind, pack.repo, base, seen)
    console.print(table)
    return status
