"""--export NN DIR: one pack as a self-contained folder to attach upstream, whose README's commands work
when followed literally from that folder on a machine with git, Python and (for a GPU pack) a GPU:
the reproducer and its modules, the patch, the hash-pinned lock of each stack it runs in (one file per
Python), skip-init/sitecustomize.py where a package's top-level __init__ must not run, the latest
receipt, and a README with the steps and the issue body. Nothing in it needs this collection."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core import fsutil
from ..core.layout import Layout
from ..core.manifest import Pack
from ..envs import locks
from ..sources import importing
from . import issue, receipts


def export(pack: Pack, dest: Path, layout: Layout) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    files = {"repro.py": pack.repro_path, **{p.name: p for p in pack.module_paths}}
    if pack.has_patch:
        files[pack.patch_path.name] = pack.patch_path
    for stack in locks.pack_stacks(pack):
        for python in locks.PYTHONS:
            lock = locks.lock_path(layout, stack, python, "linux-x86_64")
            if lock.is_file():
                files[f"requirements-{stack}-py{python}.txt"] = lock
    receipt = receipts.latest_for(pack, layout)
    if receipt is not None:
        files["receipt.json"] = receipts.receipt_path(pack, None, layout)
    written = [Path(shutil.copy2(src, dest / name)) for name, src in files.items()]
    skipped = (*pack.skip_init, *(n for c in pack.companions for n in c.skip_init))
    if skipped:
        site = dest / "skip-init" / "sitecustomize.py"
        site.parent.mkdir(exist_ok=True)
        fsutil.atomic_write(site, importing.portable_sitecustomize(skipped))
        written.append(site)
    readme = dest / "README.md"
    fsutil.atomic_write(readme, readme_text(pack, receipt, layout))
    written.append(readme)
    return written


def readme_text(pack: Pack, receipt: dict | None, layout: Layout) -> str:
    seen = {s["name"]: s.get("sentinel") for s in (receipt or {}).get("stages", [])}
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
              "`receipt.json` is the record of the run the numbers below come from.", "", "---", "",
              issue.body(pack, receipt, layout)]
    return "\n".join(lines)
