"""The benchmark's record: per-pack times from the runner's JSON reports, and a table that says whether
both runs gave the same verdicts and every one was the expected one."""

from __future__ import annotations

from harness.cli import bench


def report(verdict: str, as_expected: bool, total: float, stages: list[float]) -> dict:
    return {"packs": [{"pack": "01-toy", "verdict": verdict, "as_expected": as_expected,
                       "durations": {"total_s": total}, "stages": [{"duration_s": s} for s in stages]}]}


def record(cold: dict, warm: dict) -> dict:
    c, w = bench._per_pack(cold), bench._per_pack(warm)
    return {"date": "2026-12-01T00:00:00+00:00", "gpu": "GPU A", "jobs": 2, "cold": {"wall_s": 10.0},
            "warm": {"wall_s": 4.0}, "packs": {n: {"cold": c[n], "warm": w[n]} for n in c},
            "same_verdicts": all(c[n]["verdict"] == w[n]["verdict"] for n in c),
            "as_expected": all(r["as_expected"] for run in (c, w) for r in run.values())}


def test_per_pack_times_split_stages_from_harness():
    row = bench._per_pack(report("CONFIRMED", True, 10.0, [4.0, 5.5]))["01-toy"]
    assert row["stages_s"] == 9.5 and row["harness_s"] == 0.5 and row["as_expected"] is True


def test_the_table_says_when_a_verdict_was_not_the_expected_one():
    good = record(report("CONFIRMED", True, 10.0, [9.0]), report("CONFIRMED", True, 4.0, [3.5]))
    assert "every one as expected" in bench.table(good) and "| 01-toy | CONFIRMED | 10 | 4 | 6 | 9 | 1.0 / 0.5 |" \
        in bench.table(good)
    bad = record(report("CONFIRMED", True, 10.0, [9.0]), report("INCONCLUSIVE", False, 4.0, [3.5]))
    assert "NOT all as expected" in bench.table(bad) and "DIFFERENT" in bench.table(bad)


def test_provisioning_takes_only_the_selection_and_the_unit_source():
    argv = ["--pack", "05", "--offline", "b", "--receipt", "--jobs", "3", "--all"]
    assert bench._provision_args(argv) == ["--pack", "05", "--offline", "b", "--all"]
