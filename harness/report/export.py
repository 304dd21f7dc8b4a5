"""--export NN DIR: one pack as a self-contained folder to attach upstream. Nothing in it needs this
project: the reproducer, the patch, the latest receipt and a README with the exact commands."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core.layout import Layout
from ..core.manifest import Pack
from . import markdown, receipts


def export(pack: Pack, dest: Path, layout: Layout) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copy2(pack.repro_path, dest / "repro.py"))]
    if pack.has_patch:
        written.append(Path(shutil.copy2(pack.patch_path, dest / pack.patch_path.name)))
    receipt = receipts.latest_for(pack, layout)
    if receipt is not None:
        written.append(Path(shutil.copy2(receipts.receipt_path(pack, None, layout), dest / "receipt.json")))
    readme = dest / "README.md"
    readme.write_text(markdown.issue_body(pack, receipt, layout) + _provenance(pack, receipt))
    written.append(readme)
    return written


def _provenance(pack: Pack, receipt: dict | None) -> str:
    lines = ["", "---", "", f"Exported from the upstream-repro collection, pack `{pack.name}`."]
    if receipt is not None and pack.is_contract:
        lines.append(f"`receipt.json` is the runner's record of the run of {receipt['date'][:10]} "
                     f"(sha256 of the reproducer included; a contract pack has no patch).")
    elif receipt is not None:
        lines.append(f"`receipt.json` is the runner's record of the GPU run of {receipt['date'][:10]} "
                     f"(sha256 of the reproducer and the patch included).")
    return "\n".join(lines) + "\n"
