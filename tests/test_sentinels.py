from harness.run.sentinels import parse

GOOD = 'noise\nEVIDENCE {"err": 0.5, "threshold": 0.1}\nBUG_REPRODUCED\n'


def test_well_formed_output():
    parsed = parse(GOOD)
    assert parsed.ok and parsed.sentinel == "BUG_REPRODUCED" and parsed.evidence == {"err": 0.5, "threshold": 0.1}


def test_two_verdict_sentinels_are_an_error():
    parsed = parse(GOOD + "FIX_VALIDATED\n")
    assert not parsed.ok
    assert "exactly one verdict sentinel, found 2" in parsed.problems[0]


def test_missing_sentinel_is_an_error():
    parsed = parse('EVIDENCE {"a": 1}\n')
    assert not parsed.ok and "found 0" in parsed.problems[0]


def test_missing_evidence_is_an_error():
    parsed = parse("BUG_REPRODUCED\n")
    assert not parsed.ok and "EVIDENCE line" in parsed.problems[0]


def test_malformed_evidence_json():
    parsed = parse("EVIDENCE {not json}\nBUG_REPRODUCED\n")
    assert not parsed.ok and "not valid JSON" in parsed.problems[0]


def test_evidence_must_be_a_non_empty_object():
    assert not parse("EVIDENCE []\nFIX_VALIDATED\n").ok
    assert not parse("EVIDENCE {}\nFIX_VALIDATED\n").ok


def test_two_evidence_lines_are_an_error():
    assert not parse('EVIDENCE {"a": 1}\nEVIDENCE {"a": 2}\nFIX_VALIDATED\n').ok


def test_evidence_after_sentinel_is_an_error():
    parsed = parse('FIX_VALIDATED\nEVIDENCE {"a": 1}\n')
    assert not parsed.ok and "before the verdict sentinel" in parsed.problems[0]


def test_sentinel_inside_a_sentence_does_not_count():
    parsed = parse('EVIDENCE {"a": 1}\nwe expect BUG_REPRODUCED here\nFIX_VALIDATED\n')
    assert parsed.ok and parsed.sentinel == "FIX_VALIDATED"


def test_declared_extras_are_collected_and_others_ignored():
    parsed = parse(GOOD + "MEMORY_SAVE_VERIFIED\nPERF_WITHIN_NOISE\n", ("MEMORY_SAVE_VERIFIED",))
    assert parsed.ok and parsed.extras == ["MEMORY_SAVE_VERIFIED"]
