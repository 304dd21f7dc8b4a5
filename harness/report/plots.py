"""Figures where people would rather look than read numbers (matplotlib, an optional extra): per pack,
drawn from a stage's EVIDENCE as the reproducer printed it; and the collection's verdict history from
the nightly reports. Each figure says what it plots and by which method the numbers were taken."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.manifest import Pack
from ..core.model import PackResult


def _pyplot():
    import matplotlib  # noqa: PLC0415 - optional

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def error_over_floor(evidence: dict[str, Any], path: Path, title: str) -> Path | None:
    """A precision sweep (`sweep`: rows with a length and error/floor pairs): each error over its floor."""
    rows = evidence.get("sweep") or []
    pairs = sorted({k for row in rows for k in row if f"{k}_floor" in row})
    if not rows or not pairs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    lengths = [row["length"] for row in rows]
    for key in pairs:
        ax.plot(lengths, [row[key] / row[f"{key}_floor"] for row in rows], marker="o", label=key)
    if "long_over_floor" in evidence:
        ax.axhline(1.5, color="grey", linestyle="--", linewidth=1, label="threshold 1.5x")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length")
    ax.set_ylabel("error / bf16 floor")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def shape_sweep(evidence: dict[str, Any], path: Path, title: str) -> Path | None:
    """A kernel at several shapes (`forward`: rows with N, P, R, chunk, max_rel_err and forward_kernel_ms, or
    forward_ms from evidence printed before the packs timed kernels)."""
    rows = [r for r in evidence.get("forward") or [] if "max_rel_err" in r]
    if not rows:
        return None
    plt = _pyplot()
    names = [f"N{r['N']} P{r['P']} R{r['R']} C{r['chunk']}" for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.barh(names, [r["max_rel_err"] for r in rows])
    tol = (evidence.get("thresholds") or {}).get("rel_tol")
    if tol:
        left.axvline(tol, color="grey", linestyle="--", linewidth=1, label=f"tolerance {tol}")
        left.legend(fontsize=8)
    left.set_xlabel("max-relative error vs fp32")
    key = "forward_kernel_ms" if any("forward_kernel_ms" in r for r in rows) else "forward_ms"
    right.barh(names, [r.get(key) or 0 for r in rows])
    timing = evidence.get("timing")
    method = timing if isinstance(timing, str) else (timing or {}).get("method", "as the pack timed it")
    label = "forward GPU kernel time, ms (CUPTI)" if key == "forward_kernel_ms" else \
        "forward ms: " + method.split(";")[0][:70]
    right.set_xlabel(label, fontsize=8)
    right.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Which figure a pack's evidence makes: by the shape of the evidence, not by pack number.
DRAWERS: tuple[Callable[[dict[str, Any], Path, str], Path | None], ...] = (error_over_floor, shape_sweep)


def for_results(runs: list[tuple[Pack, PackResult]], folder: Path, relative_to: Path) -> dict[str, list[str]]:
    """Draw every figure the runs' evidence allows into folder; pack name -> paths relative to the report."""
    try:
        _pyplot()
    except ImportError:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {}
    for pack, result in runs:
        for stage in result.stages:
            for draw in DRAWERS:
                path = folder / f"{pack.name}-{stage.name}-{draw.__name__}.png"
                title = f"{pack.name}, {stage.name} stage ({result.where()})"
                if stage.evidence and draw(stage.evidence, path, title):
                    out.setdefault(pack.name, []).append(os.path.relpath(path, relative_to))
    return out


def chronological(reports: list[Path]) -> list[Path]:
    """--json reports in the order they ran (the earliest start of a pack in each)."""
    def start(report: Path) -> str:
        packs = json.loads(report.read_text()).get("packs", [])
        return min((p.get("started_at") or "" for p in packs), default="")
    return sorted(reports, key=lambda r: (start(r), r.name))


def history_figure(reports: list[Path], runs: list[tuple[Pack, PackResult]], folder: Path,
                   relative_to: Path) -> dict[str, list[str]]:
    """The verdicts-per-night figure of the given earlier reports and this run, for the markdown report."""
    try:
        _pyplot()
    except ImportError:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    drawn = history(reports, folder / "verdicts-per-night.png", ("this run", {r.pack: r.verdict for _, r in runs}))
    return {"verdicts per night": [os.path.relpath(drawn, relative_to)]} if drawn else {}


def for_receipts(layout, folder: Path) -> list[Path]:
    """The figures of every pack's base receipt (what STATUS.md shows), drawn into folder."""
    from ..core.manifest import discover, load_pack  # noqa: PLC0415
    from . import receipts  # noqa: PLC0415

    _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for pack in (load_pack(f, layout) for f in discover(layout)):
        receipt = receipts.latest_for(pack, layout)
        for stage in (receipt or {}).get("stages", []):
            for draw in DRAWERS:
                path = folder / f"{pack.name}-{stage['name']}-{draw.__name__}.png"
                gpu = (receipt["environment"].get("torch") or {}).get("cuda", {}).get("device_name") or "CPU"
                title = (f"{pack.name}, {stage['name']} stage, {receipt['target']['ref']} "
                         f"({gpu}, {receipt['date'][:10]})")
                if stage.get("evidence") and draw(stage["evidence"], path, title):
                    out.append(path)
    return out


def history(reports: list[Path], path: Path, tonight: tuple[str, dict[str, str]] | None = None) -> Path | None:
    """Verdicts per pack across nightly --json reports (oldest first) and, when given, this run's (its label,
    pack -> verdict) last: one row per pack, one column per night."""
    nights = []
    for report in reports:
        data = json.loads(report.read_text())
        nights.append((report.stem, {p["pack"]: p["verdict"] for p in data.get("packs", [])}))
    if tonight is not None:
        nights.append(tonight)
    packs = sorted({name for _, verdicts in nights for name in verdicts})
    if not nights or not packs:
        return None
    # one colour per state, named in the legend: what a maintainer reads off the chart
    states = [("bug live / seam broken", "#d62728", ("CONFIRMED", "BROKEN")),
              ("fixed upstream / held", "#2ca02c", ("FIXED_UPSTREAM", "HELD")),
              ("inconclusive", "#ff7f0e", ("INCONCLUSIVE",)), ("not run in that report", "#d9d9d9", ("SKIPPED",)),
              ("error / timeout / other", "#9467bd", ())]
    index = {v: i for i, (_, _, verdicts) in enumerate(states) for v in verdicts}
    plt = _pyplot()
    from matplotlib.colors import ListedColormap  # noqa: PLC0415 - with pyplot, an optional extra
    from matplotlib.patches import Patch  # noqa: PLC0415

    grid = [[index.get(v.get(p, "SKIPPED"), len(states) - 1) for _, v in nights] for p in packs]
    fig, ax = plt.subplots(figsize=(max(5, 3 + 0.6 * len(nights)), 0.3 * len(packs) + 2))
    ax.imshow(grid, aspect="auto", cmap=ListedColormap([c for _, c, _ in states]), vmin=0, vmax=len(states) - 1)
    ax.set_yticks(range(len(packs)), packs, fontsize=7)
    ax.set_xticks(range(len(nights)), [n for n, _ in nights], rotation=45, ha="right", fontsize=7)
    ax.set_title("verdict per pack in each report (left to right as given)", fontsize=9)
    ax.legend(handles=[Patch(color=c, label=label) for label, c, _ in states], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
