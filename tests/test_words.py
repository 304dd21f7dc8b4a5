"""Product files speak of the product and its users' machines, never of the place they were written in."""

from harness.checks import words
from harness.core.layout import Layout


def test_no_product_file_uses_the_words():
    assert words.problems(Layout()) == []


def test_the_rule_finds_them(tmp_path):
    (tmp_path / "a.md").write_text("Run it on the device machine.\nIn this session we ran it.\nA clean line.\n")
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "r.json").write_text('{"note": "device machine"}')
    found = words.problems(Layout(tmp_path))
    assert [f.split(":")[1] for f in found] == ["1", "2"] and all(f.startswith("a.md") for f in found)
