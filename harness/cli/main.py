"""Command line: parse, refuse what does not fit, dispatch to one mode, print, and the exit code (0 = every
verdict as expected). Every failure the user can cause or meet (a typo, a missing file, a full disk, a
bad bundle) is one line and exit 2; SIGINT and SIGTERM stop the running stages, and what finished is
still reported."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..bisection.history import bundle_history
from ..bisection.search import cli_run as bisect_run
from ..container.docker import ContainerError
from ..container.docker import cli_run as docker_run
from ..core import fsutil, manifest
from ..core.layout import Layout, default_cache_dir, default_env_dir
from ..core.model import Verdict
from ..envs import locks
from ..envs.provision import EnvError, FolderSource
from ..envs.store import StoreError
from ..envs.wheels import WheelError
from ..offline import bundle
from ..report import compare, export, issue, markdown, merge, offline_export, outputs, receipts
from ..run import execution
from ..run.pipeline import RunOptions, provision_pack
from ..sources import upstream
from ..sources.gitutil import GitError
from . import listing, runs
from .options import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, build_parser, mode_of


class UsageError(Exception):
    """Something about the command or the files it names; one sentence, exit 2."""


def main(argv: list[str] | None = None, layout: Layout | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    layout = layout or Layout()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage line and its one-line error (or the help)
        return int(exc.code or 0)
    # Wide when not a terminal (CI logs), so tables and evidence lines are not folded.
    # emoji off: ":100:" in a path or a reason is text, not a picture
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False, emoji=False)
    err = Console(stderr=True, highlight=False, emoji=False, width=None if sys.stderr.isatty() else 200)
    mode, problems = mode_of(args)
    if problems:
        for problem in problems:
            err.print(f"[red]error:[/] {escape(problem)}")
        return EXIT_USAGE
    restore = _install_signal_handlers()
    try:
        return _dispatch(mode, args, argv, layout, console, err)
    except (UsageError, manifest.ManifestError, bundle.BundleError, locks.StackError, EnvError,
            ContainerError, compare.CompareError, merge.MergeError, WheelError, StoreError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return EXIT_USAGE
    except OSError as exc:  # a file system fault: say which file, never a traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        err.print(f"[red]error:[/] {escape(exc.strerror or str(exc))}{escape(where)}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    finally:
        restore()
        execution.STOP.clear()


def _install_signal_handlers():
    """SIGINT / SIGTERM: every running stage stops (and its children); the main thread unwinds."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        execution.STOP.set()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, handler) for sig, handler in old.items()]


def _dispatch(mode: str, args: argparse.Namespace, argv: list[str], layout: Layout, console: Console,
              err: Console) -> int:
    if args.docker:  # the same command inside the image of the packs' stacks (harness/container)
        return docker_run(args, build_parser(), layout, lambda m: err.print(f"[dim]docker:[/] {escape(m)}"))
    if mode == "lint":
        return listing.lint(layout, console)
    if mode == "list":
        return listing.list_packs(layout, console)
    if mode == "status":
        try:
            from ..report import plots  # noqa: PLC0415 - matplotlib is an optional extra

            plots.for_receipts(layout, markdown.figures_dir(layout))
            plots.history(plots.chronological(list(layout.evidence.glob("nightly/*.json"))),
                          markdown.figures_dir(layout) / "nightly-verdicts-per-report.png")
        except ImportError:
            err.print("no figures: matplotlib is not installed (pip install -e '.[plots]')")
        fsutil.atomic_write(layout.root / "STATUS.md", markdown.status(layout))
        console.print("STATUS.md written")
        return EXIT_OK
    if mode == "merge":
        return _merge(args, layout, console, err)
    if mode == "report":
        pack = manifest.load_pack(manifest.select([args.report], layout)[0], layout)
        sys.stdout.write(issue.body(pack, receipts.latest_for(pack, layout), layout))
        return EXIT_OK
    if mode == "export":
        return _export(args, layout, console, err)
    start = time.monotonic()
    progress = lambda msg: err.print(f"[dim]{time.monotonic() - start:6.1f}s[/] {escape(msg)}")  # noqa: E731
    if mode == "bisect":
        return bisect_run(args, layout, console, err, lambda cache: _options(args, layout, cache))
    packs = [manifest.load_pack(f, layout) for f in
             (manifest.discover(layout) if args.all else manifest.select(args.pack, layout))]
    cache_dir = _cache_dir(args)
    if mode == "bundle":
        return _bundle(args, packs, cache_dir, layout, progress, console)
    if mode == "provision":
        return _provision(args, packs, cache_dir, layout, progress, console)
    return _run(args, argv, packs, cache_dir, layout, progress, console, err)


# ---------------------------------------------------------------- checks of what the command names


def _cache_dir(args: argparse.Namespace) -> Path:
    cache = (args.cache_dir or default_cache_dir()).resolve()
    if cache.exists() and not cache.is_dir():
        raise UsageError(f"the cache folder {cache} is a file; point --cache-dir (or REPRO_CACHE_DIR) at a folder")
    return cache


def _check_paths(args: argparse.Namespace) -> None:
    for flag in ("json", "junit", "markdown"):
        path = getattr(args, flag, None)
        if path is None:
            continue
        if path.is_dir():
            raise UsageError(f"--{flag} {path} is a folder; name a file")
        if path.parent.exists() and not path.parent.is_dir():
            raise UsageError(f"--{flag} {path}: {path.parent} is not a folder")
    if args.run_dir is not None and args.run_dir.exists() and not args.run_dir.is_dir():
        raise UsageError(f"--run-dir {args.run_dir} is a file; name a folder")
    python = args.interpreter
    if not (shutil.which(python) or (os.path.isfile(python) and os.access(python, os.X_OK))):
        raise UsageError(f"--interpreter {python}: no such executable")
    if getattr(args, "compare", None) is not None:
        compare.previous_verdicts(args.compare)  # unreadable or not a report: CompareError -> one line
    if getattr(args, "history", None):
        if not (args.plots and args.markdown):
            raise UsageError("--history draws into the markdown report: give --markdown FILE and --plots DIR too")
        for report in args.history:
            compare.previous_verdicts(report, "--history")  # a readable --json report, checked before the run
    if args.upstream is not None and args.upstream != "latest-release":
        try:
            upstream.check_ref(args.upstream)
        except upstream.SourceError as exc:
            raise UsageError(f"--upstream: {exc}") from exc
    for ref in getattr(args, "bundle_ref", []) or []:
        try:
            upstream.check_ref(ref)
        except upstream.SourceError as exc:
            raise UsageError(f"--bundle-ref: {exc}") from exc


def _options(args: argparse.Namespace, layout: Layout, cache_dir: Path, **over) -> RunOptions:
    _check_paths(args)
    run_dir = args.run_dir.resolve() if args.run_dir else fsutil.unique_dir(layout.runs, fsutil.run_stamp())
    opts = RunOptions(
        cache_dir=cache_dir, run_dir=run_dir, layout=layout, upstream_ref=args.upstream,
        check_only=getattr(args, "check", False), keep=args.keep, timeout_s=args.timeout,
        source_dir=getattr(args, "source", None), source_kind=getattr(args, "source_kind", "auto"),
        python=args.interpreter, env_mode=args.env, env_dir=(args.env_dir or default_env_dir()).resolve(),
        upstream_tests=getattr(args, "upstream_tests", False),
    )
    for key, value in over.items():
        setattr(opts, key, value)
    return opts


# ---------------------------------------------------------------- modes


def _run(args, argv: list[str], packs, cache_dir: Path, layout: Layout, progress, console: Console,
         err: Console) -> int:
    if args.source and len(packs) != 1:
        raise UsageError("--source DIR names one checkout; use it with exactly one --pack")
    opts = _options(args, layout, cache_dir)
    if args.offline:
        opened = bundle.open_bundle(args.offline.resolve(), progress)
        opts.cache_dir, opts.units, opts.bundle, opts.offline = opened.cache, opened.units, opened.record, True
    results = runs.run_all(packs, opts, args, layout, progress)
    title = f"upstream-repro: {args.upstream or 'pinned bases'}" + (" (--check)" if args.check else "")
    if args.jobs > 1:
        title += f" ({args.jobs} packs side by side: timings were taken on a shared machine)"
    meta = {"argv": argv, "upstream": args.upstream, "check": args.check}
    _write_outputs(args, packs, results, meta, title, console, layout)
    if args.receipt:
        for pack, result in zip(packs, results, strict=True):
            try:
                path = receipts.receipt_path(pack, args.upstream, layout)
                receipts.write(receipts.build(result, pack, ["python", "runner.py", *argv], layout), path, pack)
                console.print(f"receipt written: {path.relative_to(layout.root)}", markup=False)
            except receipts.ReceiptError as exc:
                err.print(f"[yellow]no receipt:[/] {escape(str(exc))}")
    code = _exit_code(args, results, console, err)
    return EXIT_INTERRUPTED if execution.STOP.is_set() else code


def _write_outputs(args, packs, results, meta: dict, title: str, console: Console, layout: Layout) -> None:
    """The table and the summary on the console, and --json / --junit / --markdown where asked for."""
    outputs.print_table(results, console)
    if args.json:
        outputs.write_json(results, args.json, meta)
    if args.junit:
        outputs.write_junit(results, args.junit, {p.name: p.headline for p in packs})
    if args.markdown:
        figures = {}
        if getattr(args, "plots", None):
            from ..report import plots  # noqa: PLC0415 - matplotlib is an optional extra

            runs = list(zip(packs, results, strict=True))
            figures = plots.for_results(runs, args.plots, args.markdown.parent)
            if args.history:
                figures.update(plots.history_figure(args.history, runs, args.plots, args.markdown.parent))
        fsutil.atomic_write(args.markdown, markdown.results_table(list(zip(packs, results, strict=True)), title,
                                                                  figures))


def _exit_code(args, results, console: Console, err: Console) -> int:
    """0 when every verdict is the expected one (and, with --compare, no state changed unexpectedly)."""
    bad = [r for r in results if not r.as_expected and (r.verdict != Verdict.SKIPPED or args.strict)]
    if args.compare:
        changed, news = compare.changes(compare.previous_verdicts(args.compare), results)
        for line in news:
            console.print(f"[cyan]state change (expected):[/] {escape(line)}")
        for line in changed:
            console.print(f"[red]state change (unexpected):[/] {escape(line)}")
        if changed:
            return EXIT_UNEXPECTED
    skipped = [r for r in results if r.verdict == Verdict.SKIPPED]
    if skipped and not args.strict:
        err.print(f"[yellow]{len(skipped)} pack(s) SKIPPED[/] (see the reasons above; --strict makes that fail)")
    return EXIT_UNEXPECTED if bad else EXIT_OK


def _merge(args, layout: Layout, console: Console, err: Console) -> int:
    """--merge RUN.json ...: the parts' results as one report; exit code as if it had been one run."""
    if not (args.json or args.junit or args.markdown):
        raise UsageError("--merge writes a report: name --json, --junit and/or --markdown")
    _check_paths(args)
    meta, results = merge.merge(args.merge)
    packs = [manifest.load_pack(manifest.select([r.pack], layout)[0], layout) for r in results]
    title = (f"upstream-repro: {meta['upstream'] or 'pinned bases'} (merged from {len(args.merge)} runs: "
             + ", ".join(p["file"] for p in meta["merged_from"]) + ")")
    _write_outputs(args, packs, results, meta, title, console, layout)
    return _exit_code(args, results, console, err)


def _export(args, layout: Layout, console: Console, err: Console) -> int:
    """--export NN DIR [--export-offline --python X.Y]: the folder to attach upstream."""
    pack = manifest.load_pack(manifest.select([args.export[0]], layout)[0], layout)
    cache = (args.cache_dir or default_cache_dir()).resolve()
    offline = (args.python, args.platform, cache) if args.export_offline else None
    try:
        written = export.export(pack, Path(args.export[1]), layout, offline, lambda m: err.print(m, markup=False))
    except (offline_export.OfflineExportError, GitError) as exc:
        raise UsageError(f"pack {pack.id} export for a node without network: {exc}") from exc
    for path in written:
        console.print(f"exported: {path}", markup=False)
    return EXIT_OK


def _bundle(args, packs, cache_dir: Path, layout: Layout, progress, console: Console) -> int:
    _check_paths(args)
    env_dir = (args.env_dir or default_env_dir()).resolve()
    try:
        for pack in packs if args.bundle_bisect else []:  # history/ first: bundle.json hashes it too
            index = bundle_history(pack, args.bundle.resolve(), args.upstream or "main", cache_dir, progress,
                                   args.bisect_from)
            start = f"--bisect-from {args.bisect_from}" if args.bisect_from else "the base"
            console.print(f"{pack.name}: history of {start} and {len(index['commits']) - 1} first-parent commits, "
                          f"{index['bundle_bytes'] / 2**20:.2f} MiB (history/{index['bundle']})", markup=False)
        made = bundle.create(packs, args.bundle.resolve(), args.python, args.platform, cache_dir,
                             [*([args.upstream] if args.upstream else []), *args.bundle_ref], layout, env_dir,
                             progress, runtime=args.bundle_runtime)
    except (upstream.SourceError, EnvError) as exc:
        raise UsageError(f"pack bundle: {exc}") from exc
    size = sum((args.bundle / name).stat().st_size for name in made["files"])
    console.print(f"bundle written: {args.bundle} ({size / 2**20:.1f} MiB, {len(made['files'])} files) for "
                  f"{', '.join(made['packs'])}; stacks: {', '.join(made['stacks']) or 'none'}; {len(made['units'])} "
                  f"units{' (runtime included)' if made['runtime_carried'] else ' (runtime left out)'}", markup=False)
    console.print(f"on the node: python runner.py --offline {args.bundle} " + " ".join(f"--pack {p.id}" for p in packs),
                  markup=False)
    for pack in packs if args.bundle_bisect else []:
        console.print(f"on the node: python runner.py --offline {args.bundle} --bisect {pack.id}", markup=False)
    return EXIT_OK


def _provision(args, packs, cache_dir: Path, layout: Layout, progress, console: Console) -> int:
    opts = _options(args, layout, cache_dir)
    if args.offline:
        opened = bundle.open_bundle(args.offline.resolve(), progress)
        opts.units, opts.offline = opened.units, True
    elif args.wheelhouse:
        opts.units = FolderSource(opts.env_dir / "store", args.wheelhouse.resolve())
    made = {}
    for pack in packs:
        for env in provision_pack(pack, opts, progress):
            made[env.record["name"]] = env
    for name, env in made.items():
        r = env.record
        console.print(f"{name}: {r['state']} ({r['runtime']['mode']} runtime, from {r['provisioned_from']}, "
                      f"{r['seconds']:.0f}s) at {env.path}", markup=False)
    return EXIT_OK
