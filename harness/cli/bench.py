"""The collection's own benchmark: the same run twice on one machine, first with empty kernel-compiler
caches (cold), then again with the caches the first run filled (warm), each timed by wall clock, with a
JSON record, a markdown table and (with matplotlib) a figure.

    python -m harness.cli.bench --out evidence/bench [--jobs J] [runner options: --all, --pack NN, --offline DIR]

Per pack: cold and warm wall time of the pack's run, the stages' wall times (the reproducers' processes),
an estimate of compile time (the cold stages' time minus the warm stages' time), and the harness's own
time (the pack's total minus its stages: sources, work copies, environments, checks). All times are host
wall clock; none is a GPU kernel time. Both runs must give the same verdicts; the record says whether they
did. Environments are provisioned before the cold run (their provisioning is not part of either time)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ..core import fsutil
from ..core.layout import Layout

RUNNER = Layout().root / "runner.py"


def _run(argv: list[str], caches: Path, out: Path, log: Path, timeout: int) -> tuple[float, dict, int]:
    env = {**os.environ, "TRITON_CACHE_DIR": str(caches / "triton"), "TILELANG_CACHE_DIR": str(caches / "tilelang")}
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, str(RUNNER), *argv, "--json", str(out)], env=env, stdout=fh,
                              stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.monotonic() - start
    report = json.loads(out.read_text()) if out.is_file() else {"packs": []}
    return wall, report, proc.returncode


def _provision_args(runner_args: list[str]) -> list[str]:
    """The runner options --provision takes, out of a run's (which packs, where the units come from)."""
    takes_value, flags = {"--pack", "--offline", "--interpreter", "--env-dir"}, {"--all"}
    out, i = [], 0
    while i < len(runner_args):
        arg = runner_args[i]
        if arg in flags:
            out.append(arg)
        elif arg in takes_value and i + 1 < len(runner_args):
            out += [arg, runner_args[i + 1]]
            i += 1
        i += 1
    return out


def _per_pack(report: dict) -> dict[str, dict]:
    out = {}
    for p in report.get("packs", []):
        stages = sum(s.get("duration_s", 0) for s in p.get("stages", []))
        total = p.get("durations", {}).get("total_s", 0)
        out[p["pack"]] = {"verdict": p["verdict"], "as_expected": p.get("as_expected"), "total_s": total,
                          "stages_s": round(stages, 2), "harness_s": round(total - stages, 2), "jobs": p.get("jobs", 1)}
    return out


def table(record: dict) -> str:
    lines = [f"# Collection benchmark: {record['gpu']} ({record['date'][:10]})", "",
             f"Wall clock of the whole run: **cold {record['cold']['wall_s']:.0f} s**, **warm "
             f"{record['warm']['wall_s']:.0f} s**, {record['jobs']} pack(s) side by side; verdicts "
             f"{'identical' if record['same_verdicts'] else 'DIFFERENT'} in both runs, "
             f"{'every one as expected' if record.get('as_expected') else 'NOT all as expected'}. "
             "Host wall-clock times; compile = cold stages minus warm stages (an estimate); "
             "harness = the pack's total minus its stages.",
             "", "| pack | verdict | cold (s) | warm (s) | compile, est. (s) | cold stages (s) | "
             "harness cold / warm (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in sorted(record["packs"].items(), key=lambda kv: -kv[1]["cold"]["total_s"]):
        c, w = row["cold"], row["warm"]
        lines.append(f"| {name} | {c['verdict']} | {c['total_s']:.0f} | {w['total_s']:.0f} | "
                     f"{max(c['stages_s'] - w['stages_s'], 0):.0f} | {c['stages_s']:.0f} | "
                     f"{c['harness_s']:.1f} / {w['harness_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> Path | None:
    try:
        import matplotlib  # noqa: PLC0415 - optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    rows = sorted(record["packs"].items(), key=lambda kv: -kv[1]["cold"]["total_s"])
    names = [n.split("-")[0] for n, _ in rows]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["cold"]["total_s"] for _, r in rows], 0.4, label="cold")
    ax.bar([x + 0.2 for x in xs], [r["warm"]["total_s"] for _, r in rows], 0.4, label="warm")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("wall time per pack (s)")
    ax.set_xlabel("pack")
    ax.set_title(f"cold {record['cold']['wall_s']:.0f} s, warm {record['warm']['wall_s']:.0f} s "
                 f"(whole run, {record['jobs']} side by side)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.cli.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for bench.json, bench.md and bench.png")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--timeout", type=int, default=3600, help="per run, seconds")
    p.add_argument("--receipt", action="store_true", help="the cold run writes receipts")
    args, runner_args = p.parse_known_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    base = [*runner_args, "--jobs", str(args.jobs)]
    provision = subprocess.run([sys.executable, str(RUNNER), "--provision", *_provision_args(runner_args)],
                               capture_output=True, text=True)
    with tempfile.TemporaryDirectory(prefix="bench-caches-") as tmp:
        caches = Path(tmp)
        cold = _run([*base, *(["--receipt"] if args.receipt else [])], caches, args.out / "cold.json",
                    args.out / "cold.log", args.timeout)
        warm = _run(base, caches, args.out / "warm.json", args.out / "warm.log", args.timeout)
    cold_packs, warm_packs = _per_pack(cold[1]), _per_pack(warm[1])
    gpus = {(p.get("environment", {}).get("torch") or {}).get("cuda", {}).get("device_name") for p in cold[1]["packs"]}
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gpu": ", ".join(sorted(g for g in gpus if g)) or "no GPU", "jobs": args.jobs, "runner_args": runner_args,
        "provision": {"exit_code": provision.returncode},
        "cold": {"wall_s": round(cold[0], 1), "exit_code": cold[2]},
        "warm": {"wall_s": round(warm[0], 1), "exit_code": warm[2]},
        "packs": {name: {"cold": cold_packs[name], "warm": warm_packs.get(name, {})} for name in cold_packs},
        "same_verdicts": all(cold_packs[n]["verdict"] == warm_packs.get(n, {}).get("verdict") for n in cold_packs),
        "as_expected": all(r.get("as_expected") for run in (cold_packs, warm_packs) for r in run.values()),
        "method": "host wall clock (time.monotonic) around each runner process and, per pack, the runner's own "
                  "durations; compile time estimated as cold stages minus warm stages",
    }
    fsutil.write_json(args.out / "bench.json", record)
    fsutil.atomic_write(args.out / "bench.md", table(record))
    plot(record, args.out / "bench.png")
    print(table(record))
    return 0 if record["same_verdicts"] and record["as_expected"] and cold[2] == 0 and warm[2] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
