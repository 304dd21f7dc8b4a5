"""Maintainer-facing outputs: markdown tables, STATUS.md, --report, --export, --repeat, --compare,
and the nightly workflow's schema."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness.cli import main as cli
from harness.core import evidence, manifest
from harness.core.layout import Layout
from harness.report import compare, issue, markdown, receipts
from harness.run import repeat
from harness.run.pipeline import PackResult, StageRecord

from .test_reports import result

ROOT = Layout().root


def test_status_md_is_up_to_date():
    assert (ROOT / "STATUS.md").read_text() == markdown.status(Layout()), "run: python runner.py --status"


def test_headline_follows_declared_paths_with_wildcards():
    ev = {"grouped": [{"worst_rel_err": 0.01, "finite": True}, {"worst_rel_err": 0.02}], "seed": 0}
    got = markdown.headline(ev, ("grouped.*.worst_rel_err",))
    assert got == "grouped.0.worst_rel_err=0.01, grouped.1.worst_rel_err=0.02"
    assert evidence.flatten({"a": [], "b": {"c": [1]}}) == {"a": [], "b.c.0": 1}


def test_headline_path_naming_a_list_or_dict_shows_it_whole():
    # a declared path that names an inner node matched nothing before: pack 07's clean stage showed none of
    # its four rank3_failures and pack 13's widths.24 was missing from STATUS.md
    ev = {"failures": ["k1", "k2"], "widths": {"24": {"lowered": False}}, "empty": [], "n": 0.5}
    got = markdown.headline(ev, ("failures", "widths.24", "empty", "n", "nothing.here"))
    assert got == 'failures=["k1", "k2"], widths.24={"lowered": false}, empty=[], n=0.5'
    assert markdown.headline({"a": {"b": 1, "c": 2}}, ("a.*",)) == "a.b=1, a.c=2"  # leaves still win
    long = markdown.headline({"xs": ["x" * 100, "y" * 100]}, ("xs",))
    assert long.endswith("…") and len(long) == len("xs=") + 160


def test_report_holds_the_sections_a_maintainer_needs(collection, upstream, capsys):
    collection.add_pack("01", "toy", upstream.base)
    assert cli.main(["--report", "01"], layout=collection.layout) == cli.EXIT_OK
    body = capsys.readouterr().out
    for part in ("### What breaks", "### Reproduce", "git -C upstream apply ../01-toy.patch", "### Observed",
                 "### Expected", "No receipt yet", "### The fix", "### Scope", "Not claimed:",
                 "https://github.com/acme/widget"):
        assert part in body


def test_report_says_what_the_receipt_measured_not_what_the_protocol_hopes():
    # pack 14's receipt is INCONCLUSIVE on both stages: its report must not promise BUG_REPRODUCED
    layout = Layout()
    pack = manifest.load_pack(manifest.select(["14"], layout)[0], layout)
    body = issue.body(pack, receipts.latest_for(pack, layout), layout)
    steps = body.split("**Steps/Code to reproduce bug**")[1].split("```bash")[1].split("```")[0]
    assert steps.count("python repro.py   # -> INCONCLUSIVE") == 2 and "BUG_REPRODUCED" not in steps


def test_export_runs_without_the_project(collection, upstream, cache, tmp_path):
    collection.add_pack("01", "toy", upstream.base)
    out = tmp_path / "export"
    assert cli.main(["--export", "01", str(out)], layout=collection.layout) == cli.EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == ["01-toy.patch", "README.md", "repro.py"]
    # a maintainer's checkout at the base; -S keeps site-packages (and this project's install) away
    checkout = tmp_path / "maintainer"
    subprocess.run(["git", "clone", "-q", str(upstream.path), str(checkout)], check=True)
    subprocess.run(["git", "checkout", "-q", upstream.base], cwd=checkout, check=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(checkout / "src"), "PYTHONDONTWRITEBYTECODE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-S", *args], cwd=tmp_path, env=env, capture_output=True, text=True)

    assert run("-c", "import harness").returncode != 0, "the project must not be importable here"
    first = run(str(out / "repro.py"))
    assert first.returncode == 0 and first.stdout.strip().endswith("BUG_REPRODUCED"), first.stderr
    subprocess.run(["git", "apply", str(out / "01-toy.patch")], cwd=checkout, check=True)
    assert run(str(out / "repro.py")).stdout.strip().endswith("FIX_VALIDATED")


def stage(name, sentinel, evidence):
    return StageRecord(name, sentinel, [], evidence, 0, False, 1.0, None, "x.log")


def test_repeat_agreeing_runs_keep_their_verdict():
    a = result("CONFIRMED", True)
    a.stages = [stage("clean", "BUG_REPRODUCED", {"err": 0.5, "median_ms": 3.0})]
    b = replace(a, stages=[stage("clean", "BUG_REPRODUCED", {"err": 0.51, "median_ms": 9.0})])
    combined = repeat.combine([a, b], rtol=0.05)
    assert combined.verdict == "CONFIRMED" and combined.repeat["differences"] == []


@pytest.mark.parametrize("other", [
    [stage("clean", "INCONCLUSIVE", {"err": 0.5})],
    [stage("clean", "BUG_REPRODUCED", {"err": 0.9})],
])
def test_repeat_disagreeing_runs_are_flaky(other):
    a = result("CONFIRMED", True)
    a.stages = [stage("clean", "BUG_REPRODUCED", {"err": 0.5})]
    combined = repeat.combine([a, replace(a, stages=other)], rtol=0.05)
    assert combined.verdict == "FLAKY" and not combined.as_expected and combined.repeat["n"] == 2


def test_repeat_through_the_cli(collection, upstream, cache, tmp_path, monkeypatch):
    # the first invocation sees the bug, every later one is inconclusive: run 1 and run 2 disagree
    monkeypatch.setenv("TOY_COUNTER", str(tmp_path / "counter"))
    repro = ("import json, os, pathlib, widget\n"
             "c = pathlib.Path(os.environ['TOY_COUNTER'])\n"
             "n = int(c.read_text()) + 1 if c.exists() else 1\n"
             "c.write_text(str(n))\n"
             "print('EVIDENCE ' + json.dumps({'v': widget.VALUE}))\n"
             "print('BUG_REPRODUCED' if n == 1 else 'INCONCLUSIVE')\n")
    collection.add_pack("01", "toy", upstream.base, repro=repro)
    args = ["--pack", "01", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "r"), "--repeat", "2",
            "--json", str(tmp_path / "o.json")]
    assert cli.main(args, layout=collection.layout) == cli.EXIT_UNEXPECTED
    packed = json.loads((tmp_path / "o.json").read_text())["packs"][0]
    assert packed["verdict"] == "FLAKY" and packed["repeat"]["verdicts"] == ["FIX_FAILED", "INCONCLUSIVE"]


def test_compare_flags_unexpected_state_changes(tmp_path):
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps({"packs": [{"pack": "01-toy", "upstream_ref": "main", "verdict": "CONFIRMED"},
                                          {"pack": "02-b", "upstream_ref": "main", "verdict": "CONFIRMED"}]}))
    a = replace(result("FIXED_UPSTREAM", True), pack="01-toy", upstream_ref="main", ref="main")
    b = replace(result("FIX_FAILED", False), pack="02-b", upstream_ref="main", ref="main")
    bad, news = compare.changes(compare.previous_verdicts(prev), [a, b])
    assert news == ["01-toy @ main: CONFIRMED -> FIXED_UPSTREAM"] and bad == ["02-b @ main: CONFIRMED -> FIX_FAILED"]


def test_manifest_digest_ignores_the_report_table(collection, upstream):
    folder = collection.add_pack("01", "toy", upstream.base)
    path = folder / "pack.toml"
    before = receipts.manifest_digest(path)
    path.write_text(path.read_text() + '\n[report]\nheadline = ["value"]\n')
    assert receipts.manifest_digest(path) == before
    path.write_text(path.read_text().replace("A toy pack", "Another toy pack"))
    assert receipts.manifest_digest(path) != before


def test_nightly_workflow_matches_the_github_schema():
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    if not Path(exe).exists():
        pytest.skip("check-jsonschema is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows",
                           str(ROOT / ".github" / "workflows" / "nightly.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_nightly_runs_every_stack_that_packs_start_in():
    """One nightly job per stack: a pack whose stack has no job would silently never run."""
    import re  # noqa: PLC0415

    from harness.core import manifest  # noqa: PLC0415
    from harness.envs import locks  # noqa: PLC0415

    text = (ROOT / ".github" / "workflows" / "nightly.yml").read_text()
    jobs = set(re.search(r"^\s+stack: \[(.*)\]$", text, re.MULTILINE).group(1).replace(" ", "").split(","))
    from harness.core.layout import Layout  # noqa: PLC0415

    layout = Layout(ROOT)
    starts = {locks.pack_stacks(manifest.load_pack(f, layout))[0] for f in manifest.discover(layout)}
    assert jobs == starts


def test_markdown_table_through_the_cli(collection, upstream, cache, tmp_path):
    collection.add_pack("01", "toy", upstream.base, source="[report]\nheadline = [\"value\"]")
    md = tmp_path / "t.md"
    cli.main(["--pack", "01", "--cache-dir", str(cache), "--run-dir", str(tmp_path / "r"), "--markdown", str(md)],
             layout=collection.layout)
    text = md.read_text()
    assert "| 01-toy | acme/widget |" in text and "**CONFIRMED**" in text and "clean: value=1" in text


def test_results_table_escapes_pipes(collection, upstream):
    from harness.core import manifest

    pack = manifest.load_pack(collection.add_pack("01", "toy", upstream.base), collection.layout)
    r: PackResult = result("ERROR", False)
    r.reason = "a | b"
    assert "- 01-toy: a \\| b" in markdown.results_table([(pack, replace(r, pack="01-toy"))], "t")
