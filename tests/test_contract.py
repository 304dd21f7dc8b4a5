"""Contract packs (kind parity/perf): no patch, one "contract" stage, verdicts HELD / BROKEN, through
manifest, sentinels, pipeline, verdicts, reports, receipts, --check, --report, --export and lint."""

import json
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from harness.checks import lint
from harness.cli import main as cli
from harness.core import manifest
from harness.core.manifest import ManifestError
from harness.report import compare, receipts
from harness.run import sentinels, verdicts

from .conftest import PATCH_FIX, README, manifest_text, run
from .test_reports import result as bug_result

# Holds while widget.VALUE == 1 (the v1.0 base); upstream's later commit (VALUE = 2) breaks it.
REPRO_CONTRACT = """\
import json
import widget
print("chatter: checking the seam")
print("EVIDENCE " + json.dumps({"value": widget.VALUE, "wanted": 1}))
print("CONTRACT_HELD" if widget.VALUE == 1 else "INCONCLUSIVE" if widget.VALUE is None else "CONTRACT_BROKEN")
"""


CONTRACT_CLAIM = """\
contract = "VALUE read after import equals 1, the value the integration relies on."
breaks = "A later release changes VALUE without any error; callers keep running with the new value."
"""


def contract_manifest(pack_id: str, slug: str, commit: str, kind: str = "parity", claim: str = CONTRACT_CLAIM,
                      expect: str = "", requires: str = "") -> str:
    return manifest_text(pack_id, slug, commit, kind=kind, claim=claim, expect=expect, extra_requires=requires,
                         title="A toy contract pack for the harness tests",
                         thread="https://github.com/acme/widget/issues/2", status="a seam, not a bug")


def add_contract(collection, commit, pack_id="03", slug="seam", repro=REPRO_CONTRACT, **kw):
    folder = collection.layout.packs / f"{pack_id}-{slug}"
    folder.mkdir(parents=True)
    (folder / "pack.toml").write_text(contract_manifest(pack_id, slug, commit, **kw))
    (folder / "repro.py").write_text(repro)
    (folder / "README.md").write_text(README)
    return folder


# --- manifest ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["parity", "perf"])
def test_contract_manifest_loads_without_a_patch(collection, upstream, kind):
    pack = manifest.load_pack(add_contract(collection, upstream.base, kind=kind), collection.layout)
    assert pack.is_contract and not pack.has_patch
    assert pack.claim["contract"].startswith("VALUE") and "fix" not in pack.claim
    assert not pack.patch_path.exists()


def test_bug_packs_are_not_contracts(collection, upstream):
    pack = manifest.load_pack(collection.add_pack("01", "toy", upstream.base), collection.layout)
    assert not pack.is_contract and pack.has_patch


@pytest.mark.parametrize("claim, field", [
    ('contract = "VALUE read after import equals 1, always."', "claim.breaks"),
    ('contract = "VALUE read after import equals 1, always."\nbreaks = "silently, by a new release of it."\n'
     'fix = "there is no fix in a contract pack at all"', "claim.fix"),
])
def test_contract_claim_is_checked(collection, upstream, claim, field):
    folder = add_contract(collection, upstream.base, claim=claim)
    with pytest.raises(ManifestError, match=rf"field '{field}'"):
        manifest.load_pack(folder, collection.layout)


def test_bug_pack_cannot_state_a_contract(collection, upstream):
    folder = collection.add_pack("01", "toy", upstream.base)
    text = (folder / "pack.toml").read_text().replace(
        "[claim]\n", '[claim]\ncontract = "a contract does not belong in a bug pack"\n')
    (folder / "pack.toml").write_text(text)
    with pytest.raises(ManifestError, match=r"field 'claim.contract'"):
        manifest.load_pack(folder, collection.layout)


def test_expect_values_follow_the_kind(collection, upstream):
    bad_contract = add_contract(collection, upstream.base, expect='[expect]\nmain = "CONFIRMED"')
    with pytest.raises(ManifestError, match=r"field 'expect.main'.*'CONFIRMED' is not one of \['HELD', 'BROKEN'\]"):
        manifest.load_pack(bad_contract, collection.layout)
    bad_bug = collection.add_pack("01", "toy", upstream.base, expect='[expect]\nmain = "HELD"')
    with pytest.raises(ManifestError, match=r"field 'expect.main'"):
        manifest.load_pack(bad_bug, collection.layout)


# --- sentinels and verdicts -------------------------------------------------------------------

def test_contract_sentinels_parse_under_the_same_trust_rules():
    good = 'EVIDENCE {"a": 1}\nCONTRACT_BROKEN\n'
    parsed = sentinels.parse(good, (), sentinels.CONTRACT_SENTINELS)
    assert parsed.ok and parsed.sentinel == "CONTRACT_BROKEN"
    assert not sentinels.parse("CONTRACT_HELD\n", (), sentinels.CONTRACT_SENTINELS).ok  # no EVIDENCE
    assert not sentinels.parse(good + "CONTRACT_HELD\n", (), sentinels.CONTRACT_SENTINELS).ok  # two sentinels
    assert not sentinels.parse('CONTRACT_HELD\nEVIDENCE {"a": 1}\n', (), sentinels.CONTRACT_SENTINELS).ok


def test_a_sentinel_of_the_other_kind_is_a_problem_not_chatter():
    wrong = sentinels.parse('EVIDENCE {"a": 1}\nBUG_REPRODUCED\n', (), sentinels.CONTRACT_SENTINELS)
    assert not wrong.ok and "not one this pack may print" in wrong.problems[0]
    assert not sentinels.parse('EVIDENCE {"a": 1}\nCONTRACT_HELD\n').ok  # a bug pack's parse
    mixed = sentinels.parse('EVIDENCE {"a": 1}\nBUG_REPRODUCED\nCONTRACT_HELD\n', (), sentinels.CONTRACT_SENTINELS)
    assert not mixed.ok and "found 2" in mixed.problems[0]


@pytest.mark.parametrize("outcome, verdict", [
    (verdicts.StageOutcome("CONTRACT_HELD"), "HELD"),
    (verdicts.StageOutcome("CONTRACT_BROKEN"), "BROKEN"),
    (verdicts.StageOutcome("INCONCLUSIVE"), "ERROR"),
    (verdicts.StageOutcome(None, error="exit code 1"), "ERROR"),
    (verdicts.StageOutcome(None, timed_out=True), "TIMEOUT"),
])
def test_contract_verdicts(outcome, verdict):
    assert verdicts.classify_contract(outcome)[0] == verdict


def test_expected_contract_verdict_per_ref():
    assert verdicts.expected_contract({}, "v1.0", False) == ("HELD",)
    assert verdicts.expected_contract({"main": "BROKEN"}, "main", False) == ("BROKEN",)
    assert verdicts.expected_contract({"main": "BROKEN"}, "v1.0", False) == ("HELD",)
    assert verdicts.expected_contract({"v1.0": "BROKEN"}, "v1.0", False) == ("BROKEN",)  # the base's own ref
    assert verdicts.expected_contract({"main": "BROKEN"}, "main", True) == ("CHECKED",)


# --- the pipeline -----------------------------------------------------------------------------

def test_held_at_the_pinned_base_in_one_stage(collection, upstream, opts):
    result = run(collection, opts, add_contract(collection, upstream.base))
    assert result.verdict == "HELD" and result.as_expected and result.expected == ["HELD"], result.reason
    assert [(s.name, s.sentinel) for s in result.stages] == [("contract", "CONTRACT_HELD")]
    assert result.stages[0].evidence == {"value": 1, "wanted": 1}
    assert result.patch is None and result.commit == upstream.base
    assert (opts().run_dir / "03-seam" / "contract.log").is_file()
    assert not (opts().run_dir / "03-seam" / "patched.log").exists()


def test_broken_at_a_later_ref_is_a_finding_the_manifest_states(collection, upstream, opts):
    stated = run(collection, opts, add_contract(collection, upstream.base, expect='[expect]\nmain = "BROKEN"'),
                 upstream_ref="main")
    assert stated.verdict == "BROKEN" and stated.as_expected and stated.commit == upstream.fixed
    unstated = run(collection, opts, add_contract(collection, upstream.base, pack_id="04", slug="other"),
                   upstream_ref="main")
    assert unstated.verdict == "BROKEN" and not unstated.as_expected and unstated.expected == ["HELD"]


def test_expect_can_name_the_base_ref(collection, upstream, opts):
    result = run(collection, opts, add_contract(collection, upstream.base, expect='[expect]\n"v1.0" = "BROKEN"'))
    assert result.verdict == "HELD" and result.expected == ["BROKEN"] and not result.as_expected


@pytest.mark.parametrize("repro, verdict, why", [
    ('print("EVIDENCE {\\"a\\": 1}")\nprint("CONTRACT_HELD")\nraise SystemExit(3)\n', "ERROR", "exit code 3"),
    ('print("EVIDENCE {\\"a\\": 1}")\nprint("INCONCLUSIVE")\n', "ERROR", "INCONCLUSIVE"),
    ('print("EVIDENCE {\\"a\\": 1}")\nprint("BUG_REPRODUCED")\n', "ERROR", "not one this pack may print"),
    ('print("CONTRACT_HELD")\n', "ERROR", "EVIDENCE"),
    ('import time\ntime.sleep(60)\n', "TIMEOUT", "timeout"),
])
def test_untrusted_contract_stages(collection, upstream, opts, repro, verdict, why):
    result = run(collection, opts, add_contract(collection, upstream.base, repro=repro), timeout_s=2)
    assert result.verdict == verdict and why in result.reason, result.reason
    assert not result.as_expected and result.stages[0].sentinel in (None, "INCONCLUSIVE")


def test_unmet_requirements_skip(collection, upstream, opts):
    folder = add_contract(collection, upstream.base, requires='python_deps = ["surely-not-installed-pkg>=1"]')
    result = run(collection, opts, folder)
    assert result.verdict == "SKIPPED" and "surely-not-installed-pkg" in result.reason and result.stages == []


def test_check_fetches_sources_only(collection, upstream, opts):
    folder = add_contract(collection, upstream.base, repro="raise SystemExit('must not run')\n")
    result = run(collection, opts, folder, check_only=True)
    assert result.verdict == "CHECKED" and result.as_expected and result.stages == [] and result.patch is None
    assert "contract pack" in result.reason


# --- outputs ----------------------------------------------------------------------------------

def test_cli_json_junit_markdown_and_receipt(collection, upstream, cache, tmp_path, capsys):
    add_contract(collection, upstream.base)
    args = ["--pack", "03", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "r"), "--json",
            str(tmp_path / "o.json"), "--junit", str(tmp_path / "o.xml"), "--markdown", str(tmp_path / "o.md"),
            "--receipt"]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "HELD" in out and "contract EVIDENCE" in out and "CONTRACT_HELD" in out
    packed = json.loads((tmp_path / "o.json").read_text())["packs"][0]
    assert packed["verdict"] == "HELD" and packed["patch"] is None and len(packed["stages"]) == 1
    case = ET.parse(tmp_path / "o.xml").getroot().find("testsuite/testcase")
    assert case.find("failure") is None and "contract: sentinel=CONTRACT_HELD" in case.find("system-out").text
    assert "**HELD**" in (tmp_path / "o.md").read_text()

    path = collection.layout.evidence / "03-seam.json"
    receipt = json.loads(path.read_text())
    receipts.validate(receipt, path)
    assert receipt["verdict"] == "HELD" and receipt["patch"] == {"status": "no_patch"}
    assert [s["name"] for s in receipt["stages"]] == ["contract"] and receipt["hashes"]["patch"] is None
    pack = manifest.load_pack(collection.layout.packs / "03-seam", collection.layout)
    assert receipts.stale_files(receipt, pack) == []

    # a BROKEN contract the manifest did not expect fails the run
    assert cli.main([*args[:6], "--upstream", "main"], layout=collection.layout) == cli.EXIT_UNEXPECTED


def test_report_and_export_have_no_patch_section(collection, upstream, tmp_path, capsys):
    add_contract(collection, upstream.base)
    assert cli.main(["--report", "03"], layout=collection.layout) == cli.EXIT_OK
    body = capsys.readouterr().out
    for part in ("**The contract.**", "**How it breaks silently.**", "CONTRACT_HELD or CONTRACT_BROKEN",
                 "a CPU is enough", "### Scope", "Not claimed:", "(A contract: no patch.)"):
        assert part in body
    for absent in ("git -C upstream apply", ".patch"):
        assert absent not in body
    out = tmp_path / "export"
    assert cli.main(["--export", "03", str(out)], layout=collection.layout) == cli.EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "repro.py"]  # the toy pack has no stack


def test_report_with_a_cpu_receipt(collection, upstream, cache, tmp_path, capsys):
    add_contract(collection, upstream.base)
    cli.main(["--pack", "03", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "r"), "--receipt"],
             layout=collection.layout)
    capsys.readouterr()
    cli.main(["--report", "03"], layout=collection.layout)
    body = capsys.readouterr().out
    assert "- at this ref: `CONTRACT_HELD`" in body and "Measured on a CPU" in body


def test_lint_contract_packs(collection, upstream):
    add_contract(collection, upstream.base)
    assert lint.lint(collection.layout) == []
    (collection.layout.patches / "03-seam.patch").write_text(PATCH_FIX)
    (collection.layout.packs / "03-seam" / "repro.py").write_text('print("EVIDENCE {}")\nprint("CONTRACT_HELD")\n')
    problems = lint.lint(collection.layout)
    assert any("contract) pack has no patch" in p for p in problems)
    assert any("never prints CONTRACT_BROKEN" in p for p in problems)
    assert not any("BUG_REPRODUCED" in p for p in problems)


def test_compare_contract_state_changes():
    held = replace(bug_result("HELD", True), pack="03-seam", upstream_ref="main", ref="main")
    broken = replace(held, verdict="BROKEN", as_expected=False)
    bad, news = compare.changes({("03-seam", "main"): "HELD"}, [broken])
    assert bad == ["03-seam @ main: HELD -> BROKEN"] and news == []
    bad, news = compare.changes({("03-seam", "main"): "BROKEN"}, [held])
    assert news == ["03-seam @ main: BROKEN -> HELD"] and bad == []
