"""--merge: one report from the --json reports of a run made in parts."""

import json
import xml.etree.ElementTree as ET

from harness.cli import main as cli


def _run(collection, cache, tmp_path, pack_id: str, name: str, *extra: str) -> str:
    out = tmp_path / f"{name}.json"
    args = ["--pack", pack_id, "--cache-dir", str(cache), "--run-dir", str(tmp_path / name), "--json", str(out), *extra]
    cli.main(args, layout=collection.layout)
    return str(out)


def test_parts_merge_into_one_report(collection, upstream, cache, tmp_path):
    collection.add_pack("01", "one", upstream.base)
    collection.add_pack("02", "two", upstream.base, expect='[expect]\nmain = "CONFIRMED"')
    a = _run(collection, cache, tmp_path, "01", "a", "--upstream", "main")
    b = _run(collection, cache, tmp_path, "02", "b", "--upstream", "main")
    out = ["--json", str(tmp_path / "m.json"), "--junit", str(tmp_path / "m.xml"), "--markdown", str(tmp_path / "m.md")]
    # 02 expects CONFIRMED at main, but upstream fixed it: the merged report fails as the run did
    assert cli.main(["--merge", a, b, *out], layout=collection.layout) == cli.EXIT_UNEXPECTED
    merged = json.loads((tmp_path / "m.json").read_text())
    assert [p["pack"] for p in merged["packs"]] == ["01-one", "02-two"]
    assert [p["verdict"] for p in merged["packs"]] == ["FIXED_UPSTREAM", "FIXED_UPSTREAM"]
    assert merged["upstream"] == "main"
    assert [(p["file"], p["packs"]) for p in merged["merged_from"]] == [("a.json", ["01-one"]), ("b.json", ["02-two"])]
    assert merged["merged_from"][0]["argv"][:2] == ["--pack", "01"]
    assert merged["packs"][0]["stages"] == json.loads(open(a).read())["packs"][0]["stages"], "results unchanged"
    suite = ET.parse(tmp_path / "m.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert "merged from 2 runs: a.json, b.json" in (tmp_path / "m.md").read_text()
    # a nightly in parts compares with the previous night as a single run would
    prev = json.loads((tmp_path / "m.json").read_text())
    prev["packs"][0]["verdict"] = "CONFIRMED"
    (tmp_path / "prev.json").write_text(json.dumps(prev))
    again = ["--merge", a, "--json", str(tmp_path / "m2.json"), "--compare", str(tmp_path / "prev.json")]
    assert cli.main(again, layout=collection.layout) == cli.EXIT_OK, "CONFIRMED -> FIXED_UPSTREAM is news"
    prev["packs"][0]["verdict"] = "FIX_FAILED"
    (tmp_path / "prev.json").write_text(json.dumps(prev))
    assert cli.main(again, layout=collection.layout) == cli.EXIT_UNEXPECTED


def test_a_pack_in_two_parts_is_refused(collection, upstream, cache, tmp_path, capsys):
    collection.add_pack("01", "one", upstream.base)
    a = _run(collection, cache, tmp_path, "01", "a")
    b = _run(collection, cache, tmp_path, "01", "b")
    assert cli.main(["--merge", a, b, "--json", str(tmp_path / "m.json")], layout=collection.layout) == 2
    assert "pack 01-one is in both" in capsys.readouterr().err and not (tmp_path / "m.json").exists()


def test_merge_needs_an_output_and_real_reports(collection, upstream, tmp_path, capsys):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    assert cli.main(["--merge", str(tmp_path / "x.json")], layout=collection.layout) == 2
    assert "name --json" in capsys.readouterr().err
    assert cli.main(["--merge", str(tmp_path / "x.json"), "--json", str(tmp_path / "m.json")],
                    layout=collection.layout) == 2
    assert "no 'packs' list" in capsys.readouterr().err
