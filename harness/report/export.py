"""--export NN DIR: one pack as a self-contained folder to attach upstream, whose README's commands work
when followed literally from that folder on a machine with git, Python and (for a GPU pack) a GPU:
the reproducer and its modules, the patch, the hash-pinned lock of each stack it runs in (one file per
Python), skip-init/sitecustomize.py where a package's top-level __init__ must not run, the latest
receipt, and a README with the steps and the issue body. Nothing in it needs this collection.

With `offline` (a Python and platform) the folder also carries what a second route needs on a GPU node
without network: the checkouts as archives and the locked wheels without the runtime (offline_export.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core import fsutil
from ..core.layout import Layout
from ..core.manifest import Pack
from ..envs import locks
from ..sources import importing
from . import issue, offline_export, receipts


def export(pack: Pack, dest: Path, layout: Layout, offline: tuple[str, str, Path] | None = None,
           progress: offline_export.Progress = lambda _msg: None) -> list[Path]:
    """offline: (Python X.Y, platform, source cache) to also carry the second route's files."""
    dest.mkdir(parents=True, exist_ok=True)
    receipt = receipts.latest_for(pack, layout)
    route: list[str] = []
    carried: list[Path] = []
    if offline is not None:
        python, platform, cache = offline
        carried, checkouts, stack_locks = offline_export.carry(pack, dest, layout, cache, python, platform, progress)
        route = offline_route(python, offline_export.steps(pack, seen_of(receipt), checkouts, stack_locks, python))
    files = {"repro.py": pack.repro_path, **{p.name: p for p in pack.module_paths}}
    if pack.has_patch:
        files[pack.patch_path.name] = pack.patch_path
    for stack in locks.pack_stacks(pack):
        for python in locks.PYTHONS:
            lock = locks.lock_path(layout, stack, python, "linux-x86_64")
            if lock.is_file():
                files[f"requirements-{stack}-py{python}.txt"] = lock
    if receipt is not None:
        files["receipt.json"] = receipts.receipt_path(pack, None, layout)
    written = [*carried, *(Path(shutil.copy2(src, dest / name)) for name, src in files.items())]
    skipped = (*pack.skip_init, *(n for c in pack.companions for n in c.skip_init))
    if skipped:
        site = dest / "skip-init" / "sitecustomize.py"
        site.parent.mkdir(exist_ok=True)
        fsutil.atomic_write(site, importing.portable_sitecustomize(skipped))
        written.append(site)
    readme = dest / "README.md"
    fsutil.atomic_write(readme, readme_text(pack, receipt, layout, route))
    written.append(readme)
    return written


def seen_of(receipt: dict | None) -> dict[str, str | None]:
    """stage name -> the sentinel the latest receipt recorded."""
    return {s["name"]: s.get("sentinel") for s in (receipt or {}).get("stages", [])}


def offline_route(python: str, steps: list[str]) -> list[str]:
    return ["## On a GPU node without network", "",
            "This folder also carries the sources (`*.tar.gz`: the pinned release, or the pinned commit's files) "
            f"and the locked wheels for Python {python} (`wheels/`) without torch, triton and the CUDA libraries: "
            "this route checks that the node's Python has the locked build of those and reuses it, installs the "
            "rest into `site/` here and imports it through `PYTHONPATH` (that Python itself is left unchanged). "
            f"It needs Python {python} with that torch, triton and pip, and git. From this folder:", "",
            "```bash", *steps, "```", ""]


def readme_text(pack: Pack, receipt: dict | None, layout: Layout, offline: list[str] | None = None) -> str:
    seen = seen_of(receipt)
    cap = f" (compute capability {pack.min_capability} or newer)" if pack.min_capability else ""
    gpu = f"a CUDA GPU{cap}, " if pack.gpu else ""
    lines = [f"# {pack.title}", "", f"Pack `{pack.name}` of the upstream-repro collection, exported to run on its own.",
             f"Needs {gpu}git and Python {locks.PYTHONS[0]} to {locks.PYTHONS[-1]} on Linux x86_64. "
             "From this folder:", "",
             "```bash", *issue.steps(pack, layout, seen, locked=True), "```", ""]
    lines += issue.skip_init_note(pack) + ([""] if issue.skip_init_note(pack) else [])
    lines += ["Each `python repro.py` prints one `EVIDENCE {...}` line (what it measured, with its thresholds) and "
              "then one sentinel line; the comment after it is what the latest receipt recorded.",
              "`requirements-*.txt` are the collection's locks (every package by version and sha256); "
              "`receipt.json` is the record of the run the numbers below come from.", "", *(offline or []), "---", "",
              issue.body(pack, receipt, layout)]
    return "\n".join(lines)
