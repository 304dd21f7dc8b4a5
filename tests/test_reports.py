import json
import xml.etree.ElementTree as ET

from harness.report import outputs as reports
from harness.run.pipeline import PackResult, StageRecord


def result(verdict: str, as_expected: bool) -> PackResult:
    stage = StageRecord("clean", "BUG_REPRODUCED", [], {"err": 0.5, "floor": 0.01}, 0, False, 1.0, None, "x.log")
    return PackResult(pack="01-toy", id="01", title="t", repo="acme/widget", ref="v1.0", upstream_ref=None,
                      commit="a" * 40, verdict=verdict, reason="because", expected=["CONFIRMED"],
                      as_expected=as_expected, source={"kind": "git"}, stages=[stage],
                      durations={"total_s": 2.0})


def test_json_report(tmp_path):
    path = tmp_path / "out.json"
    reports.write_json([result("CONFIRMED", True)], path, {"argv": ["--all"]})
    doc = json.loads(path.read_text())
    assert doc["packs"][0]["verdict"] == "CONFIRMED" and doc["packs"][0]["stages"][0]["evidence"]["err"] == 0.5


def test_junit_one_case_per_pack_with_outcomes(tmp_path):
    path = tmp_path / "out.xml"
    skipped = result("SKIPPED", False)
    skipped.pack = "02-skip"
    failed = result("FIX_FAILED", False)
    failed.pack = "03-bad"
    reports.write_junit([result("CONFIRMED", True), skipped, failed], path)
    suite = ET.parse(path).getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["03-bad@v1.0"].find("failure").get("type") == "FIX_FAILED"
    assert cases["02-skip@v1.0"].find("skipped") is not None
    assert "EVIDENCE" in cases["01-toy@v1.0"].find("system-out").text


def test_stage_numbers_digest():
    assert reports.stage_numbers(result("CONFIRMED", True)) == "clean: err=0.5"
