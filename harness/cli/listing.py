"""--lint and --list: the collection's own files, read without fetching or running anything."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..checks import lint as lint_mod
from ..core import manifest
from ..core.layout import Layout
from ..report import receipts
from .options import EXIT_OK, EXIT_UNEXPECTED


def lint(layout: Layout, console: Console) -> int:
    problems = lint_mod.lint(layout)
    for p in problems:
        console.print(f"[red]lint:[/] {escape(p)}")
    count = len(manifest.discover(layout))
    console.print(f"{count} pack(s) checked, {len(problems)} problem(s)")
    return EXIT_UNEXPECTED if problems else EXIT_OK


def list_packs(layout: Layout, console: Console) -> int:
    table = Table(title="packs")
    for col in ("id", "pack", "kind", "target", "base", "stack", "latest receipt"):
        table.add_column(col, overflow="fold")
    status = EXIT_OK
    for folder in manifest.discover(layout):
        try:
            pack = manifest.load_pack(folder, layout)
        except manifest.ManifestError as exc:
            table.add_row(folder.name[:3], escape(folder.name), "?", "?", "?", "?",
                          f"[red]bad manifest[/]: {escape(str(exc))}")
            status = EXIT_UNEXPECTED
            continue
        try:
            receipt = receipts.latest_for(pack, layout)
        except (OSError, ValueError) as exc:
            receipt, seen = None, f"[red]unreadable receipt[/]: {escape(str(exc))}"
        else:
            seen = "none"
        if receipt is not None:
            stale = receipts.stale_files(receipt, pack)
            gpu = receipt["environment"].get("torch", {}).get("cuda", {}).get("device_name", "no GPU")
            seen = escape(f"{receipt['verdict']} {receipt['date'][:10]} on {gpu}") + (
                f" [red](stale: {escape(', '.join(stale))} changed)[/]" if stale else "")
        base = pack.base_ref + (f" / {pack.sdist}" if pack.sdist else "")
        name = escape(pack.slug) + (" [dim](retired)[/]" if pack.retired else "")
        stacks = ", ".join(s for s in (pack.stack, pack.compiler.fixed_stack if pack.compiler else None) if s) or "-"
        table.add_row(pack.id, name, pack.kind, pack.repo, escape(base), stacks, seen)
    console.print(table)
    return status
