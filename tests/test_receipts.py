"""Every committed receipt must be well-formed and made from the files as they are now."""

import json

import pytest

from harness.core import manifest
from harness.core.layout import Layout
from harness.core.model import StageRecord
from harness.report import receipts

from .test_reports import result

LAYOUT = Layout()
COMMITTED = sorted(p for p in LAYOUT.evidence.glob("*.json") if p.name != receipts.SEALS)


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_receipt_is_valid_and_current(path):
    receipt = json.loads(path.read_text())
    receipts.validate(receipt, path)
    pack = manifest.load_pack(LAYOUT.packs / receipt["pack"], LAYOUT)
    assert receipts.stale_files(receipt, pack) == [], f"{path.name} is stale: rerun the pack on the GPU"
    expected_name = receipts.receipt_path(pack, receipt["target"]["upstream_ref"], LAYOUT).name
    assert path.name == expected_name
    assert receipt["as_expected"] is (receipt["verdict"] in receipt["expected"])
    for stage in receipt["stages"]:
        if stage["sentinel"] is not None:
            assert stage["exit_code"] == 0 and stage["evidence"], "a sentinel is trusted only with exit 0 + EVIDENCE"
    assert receipts.problems(path, receipt, pack, LAYOUT) == []


def _edits():
    def verdict(r):
        r["verdict"] = "FIXED_UPSTREAM" if r["verdict"] != "FIXED_UPSTREAM" else "CONFIRMED"

    def number(r):
        ev = r["stages"][0]["evidence"]
        key = next(k for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)) if any(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in ev.values()) else None
        if key is None:
            ev["added_by_hand"] = 1
        else:
            ev[key] = ev[key] * 2 + 1

    def sentinel(r):
        s = r["stages"][-1]
        s["sentinel"] = "BUG_REPRODUCED" if s["sentinel"] != "BUG_REPRODUCED" else "FIX_VALIDATED"

    return {"verdict": verdict, "evidence number": number, "stage sentinel": sentinel}


@pytest.mark.parametrize("edit", list(_edits()), ids=list(_edits()))
@pytest.mark.parametrize("path", COMMITTED[:4] + COMMITTED[-2:], ids=lambda p: p.name)
def test_a_hand_edited_receipt_fails_the_check(path, edit):
    receipt = json.loads(path.read_text())
    pack = manifest.load_pack(LAYOUT.packs / receipt["pack"], LAYOUT)
    _edits()[edit](receipt)
    assert receipts.problems(path, receipt, pack, LAYOUT), f"a receipt with an edited {edit} passed"


def test_every_active_pack_has_a_receipt():
    for folder in manifest.discover(LAYOUT):
        pack = manifest.load_pack(folder, LAYOUT)
        if not pack.retired:
            assert receipts.receipt_path(pack, None, LAYOUT).is_file(), f"{pack.name} has no GPU receipt yet"


def test_receipt_is_refused_for_a_skip(collection, upstream):
    pack = manifest.load_pack(collection.add_pack("01", "toy", upstream.base), collection.layout)
    skipped = result("SKIPPED", False)
    skipped.stages = []
    with pytest.raises(receipts.ReceiptError, match="measured nothing"):
        receipts.build(skipped, pack, ["runner.py"], collection.layout)


@pytest.mark.parametrize("verdict", ["ERROR", "TIMEOUT"])
def test_a_faulty_run_writes_no_receipt_over_a_finding(collection, upstream, verdict):
    pack = manifest.load_pack(collection.add_pack("01", "toy", upstream.base), collection.layout)
    with pytest.raises(receipts.ReceiptError, match="fault of the run"):
        receipts.build(result(verdict, False), pack, ["runner.py"], collection.layout)


def test_stale_receipt_is_detected(collection, upstream):
    folder = collection.add_pack("01", "toy", upstream.base)
    pack = manifest.load_pack(folder, collection.layout)
    receipt = {"hashes": receipts.current_hashes(pack)}
    assert receipts.stale_files(receipt, pack) == []
    (folder / "repro.py").write_text((folder / "repro.py").read_text() + "\n# changed\n")
    assert receipts.stale_files(receipt, pack) == ["repro.py"]


def test_expect_table_is_a_forecast_not_a_measurement(collection, upstream):
    folder = collection.add_pack("01", "toy", upstream.base)
    path = folder / "pack.toml"
    pack = manifest.load_pack(folder, collection.layout)
    # A receipt from before [expect] left the digest, for a manifest without [expect]:
    older = {"hashes": {**receipts.current_hashes(pack), "pack.toml": receipts.manifest_digest(path, with_expect=True)}}
    path.write_text(path.read_text() + '\n[expect]\nmain = "FIXED_UPSTREAM"\n')
    assert receipts.stale_files(older, pack) == [], "adding a forecast changes nothing measured"
    today = {"hashes": receipts.current_hashes(pack)}
    older = {"hashes": {**today["hashes"], "pack.toml": receipts.manifest_digest(path, with_expect=True)}}
    assert today["hashes"]["pack.toml"] != older["hashes"]["pack.toml"]
    path.write_text(path.read_text().replace('"FIXED_UPSTREAM"', '"CONFIRMED"'))
    assert receipts.stale_files(today, pack) == []
    # An older receipt hashed its [expect]: once that table changes, nothing proves the rest did not.
    assert receipts.stale_files(older, pack) == ["pack.toml"]
    path.write_text(path.read_text().replace("A toy pack", "Another toy pack"))
    assert receipts.stale_files(today, pack) == ["pack.toml"]


def test_harness_digest_tracks_the_runner_code(tmp_path, monkeypatch):
    first = receipts.harness_digest()
    assert first == receipts.harness_digest() and len(first) == 64
    fake = tmp_path / "harness"
    fake.mkdir()
    (fake / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(receipts.resources, "files", lambda name: fake)
    one = receipts.harness_digest()
    (fake / "a.py").write_text("x = 2\n")
    assert receipts.harness_digest() != one


def test_runs_accumulate_over_the_same_files_under_either_digest(collection, upstream):
    folder = collection.add_pack("01", "toy", upstream.base)
    (folder / "pack.toml").write_text((folder / "pack.toml").read_text() + '\n[expect]\nmain = "CONFIRMED"\n')
    pack = manifest.load_pack(folder, collection.layout)
    path = collection.layout.evidence / "01-toy.json"

    def write() -> dict:
        ran = result("CONFIRMED", True)
        ran.environment = {"python": "3.12", "packages": {}, "torch": {"importable": False}}
        receipts.write(receipts.build(ran, pack, ["runner.py"], collection.layout), path, pack)
        return json.loads(path.read_text())

    assert len(write()["runs"]) == 1 and len(write()["runs"]) == 2
    older = json.loads(path.read_text())  # as if written before [expect] left the digest
    older["hashes"]["pack.toml"] = receipts.manifest_digest(pack.manifest_path, with_expect=True)
    path.write_text(json.dumps(older))
    assert len(write()["runs"]) == 3
    (folder / "repro.py").write_text((folder / "repro.py").read_text() + "\n# changed\n")
    assert len(write()["runs"]) == 1, "other files: earlier runs measured something else"


def test_a_patch_that_breaks_upstream_tests_is_recorded_and_re_derived(collection, upstream, tmp_path):
    """--upstream-tests turns CONFIRMED into FIX_FAILED; the receipt keeps the tests' record, and the check
    that re-derives the verdict from the stages takes it into account (and refuses it edited away)."""
    folder = collection.add_pack("01", "toy", upstream.base)
    pack = manifest.load_pack(folder, collection.layout)
    r = result("FIX_FAILED", True)
    r.stages.append(StageRecord("patched", "FIX_VALIDATED", [], {"err": 0.0}, 0, False, 1.0, None, "y.log"))
    r.patch = {"status": "applied"}
    r.environment = json.loads(COMMITTED[0].read_text())["environment"]
    r.upstream_tests = {"clean": {"ran": True}, "patched": {"ran": True}, "newly_failing": ["tests/t.py::test_a"]}
    receipt = receipts.build(r, pack, ["runner.py"], collection.layout)
    path = receipts.write(receipt, tmp_path / "01-toy.json", pack)
    written = json.loads(path.read_text())
    assert written["upstream_tests"]["newly_failing"] == ["tests/t.py::test_a"]
    assert receipts.derived_verdict(written, pack) == "FIX_FAILED"
    written["upstream_tests"]["newly_failing"] = []
    assert receipts.derived_verdict(written, pack) == "CONFIRMED"
