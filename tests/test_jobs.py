"""--jobs J: packs side by side on one machine, exclusive packs alone afterwards, the same verdicts, and
results and receipts that say how many packs shared the machine."""

import json

from harness.cli import main as cli
from harness.core import manifest
from harness.report import receipts

# Each stage records when it ran, so the test can see which stages overlapped.
REPRO = """\
import json, time, widget
t0 = time.time(); time.sleep(1.0); t1 = time.time()
print("EVIDENCE " + json.dumps({"value": widget.VALUE, "t0": t0, "t1": t1}))
print("FIX_VALIDATED" if widget.VALUE >= 2 else "BUG_REPRODUCED")
"""


def _windows(report: dict, name: str) -> list[tuple[float, float]]:
    pack = next(p for p in report["packs"] if p["pack"] == name)
    return [(s["evidence"]["t0"], s["evidence"]["t1"]) for s in pack["stages"]]


def test_jobs_run_packs_side_by_side_and_exclusive_ones_alone(collection, upstream, cache, tmp_path):
    for n in ("01", "02", "03"):
        collection.add_pack(n, f"toy{n}", upstream.base, repro=REPRO)
    collection.add_pack("04", "timed", upstream.base, repro=REPRO, expect="exclusive = true")
    args = ["--all", "--jobs", "3", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "r"),
            "--json", str(tmp_path / "o.json"), "--markdown", str(tmp_path / "o.md")]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    report = json.loads((tmp_path / "o.json").read_text())
    assert [p["pack"] for p in report["packs"]] == ["01-toy01", "02-toy02", "03-toy03", "04-timed"], "pack order"
    assert {p["verdict"] for p in report["packs"]} == {"CONFIRMED"}
    assert [p["jobs"] for p in report["packs"]] == [3, 3, 3, 1]
    clean = [_windows(report, f"0{n}-toy0{n}")[0] for n in (1, 2, 3)]
    assert max(t0 for t0, _ in clean) < min(t1 for _, t1 in clean), "the three clean stages overlapped"
    shared_end = max(t1 for n in (1, 2, 3) for _, t1 in _windows(report, f"0{n}-toy0{n}"))
    assert min(t0 for t0, _ in _windows(report, "04-timed")) > shared_end, "the exclusive pack ran alone, after"
    assert "side by side" in (tmp_path / "o.md").read_text()


def test_jobs_one_is_sequential_and_receipts_record_the_jobs(collection, upstream, cache, tmp_path):
    collection.add_pack("01", "toy", upstream.base, repro=REPRO)
    collection.add_pack("02", "toy", upstream.base, repro=REPRO)
    args = ["--all", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "r"), "--json", str(tmp_path / "o.json")]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    report = json.loads((tmp_path / "o.json").read_text())
    first, second = _windows(report, "01-toy"), _windows(report, "02-toy")
    assert max(t1 for _, t1 in first) < min(t0 for t0, _ in second), "without --jobs, one pack after the other"
    assert cli.main([*args, "--jobs", "2", "--receipt"], layout=collection.layout) == cli.EXIT_OK
    receipt = json.loads((collection.layout.root / "evidence" / "01-toy.json").read_text())
    assert receipt["runner"]["jobs"] == 2 and receipt["runs"][-1]["jobs"] == 2


def test_exclusive_is_scheduling_and_leaves_the_manifest_hash_alone(collection, upstream, tmp_path):
    plain = collection.add_pack("01", "toy", upstream.base)
    marked = collection.add_pack("02", "toy", upstream.base, expect="exclusive = true")
    assert manifest.load_pack(marked, collection.layout).exclusive
    assert not manifest.load_pack(plain, collection.layout).exclusive
    text = (marked / "pack.toml").read_text()
    without = tmp_path / "pack.toml"
    without.write_text("".join(ln for ln in text.splitlines(keepends=True) if "exclusive" not in ln))
    assert receipts.manifest_digest(marked / "pack.toml") == receipts.manifest_digest(without)
    without.write_text(text.replace("timeout_s = 60", "timeout_s = 61"))
    assert receipts.manifest_digest(marked / "pack.toml") != receipts.manifest_digest(without), "the rest counts"


def test_jobs_refuses_nonsense(collection, upstream, capsys):
    collection.add_pack("01", "toy", upstream.base)
    assert cli.main(["--all", "--jobs", "0"], layout=collection.layout) == cli.EXIT_USAGE
    assert cli.main(["--all", "--jobs", "2", "--bundle", "b"], layout=collection.layout) == cli.EXIT_USAGE
    assert "--jobs" in capsys.readouterr().err
