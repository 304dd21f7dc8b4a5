"""Product files speak of the product and its users' machines, never of the place they were written in."""

from harness.checks import words
from harness.core.layout import Layout


def test_no_product_file_uses_the_words():
    assert words.problems(Layout()) == []


def test_the_rule_finds_a_refused_phrase_where_it_is_refused(tmp_path, monkeypatch):
    """With two stand-in phrases in the digest sets: a two-word phrase anywhere, and a word between spaces
    but not as an identifier; data in evidence/ is not read."""
    monkeypatch.setattr(words, "ANYWHERE", {11: frozenset({words.digest("blue lagoon")})})
    monkeypatch.setattr(words, "BETWEEN_SPACES", frozenset({words.digest("harbour")}))
    (tmp_path / "a.md").write_text("Run it in the Blue  lagoons.\nWe met at the harbour, twice.\n"
                                   "def f(harbour): pass\nA clean line.\nblue-lagoon\nif len(blue) % lagoon:\n"
                                   "blue_lagoon = 1\n")
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "r.json").write_text('{"note": "blue lagoon"}')
    found = words.problems(Layout(tmp_path))
    assert [f.split(":")[1] for f in found] == ["1", "2", "5", "7"] and all(f.startswith("a.md") for f in found)


def test_the_digests_are_of_lower_case_phrases():
    assert all(len(d) == 16 and int(d, 16) >= 0 for ds in [*words.ANYWHERE.values(), words.BETWEEN_SPACES]
               for d in ds)
    assert words.refused("nothing to see") is None
