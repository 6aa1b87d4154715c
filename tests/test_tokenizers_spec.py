"""The character tables of bert_common.tokenizers.spec: helpers, and (slow) a re-measurement of every
code point against the ``tokenizers`` library they were taken from."""
from __future__ import annotations

import importlib.util
import os
import re

import pytest

from bert_common.tokenizers import spec

RANGE_TABLES = ["CONTROL_RANGES", "WHITESPACE_RANGES", "CJK_RANGES", "PUNCTUATION_RANGES", "NONSPACING_MARK_RANGES"]


@pytest.mark.parametrize("name", RANGE_TABLES)
def test_ranges_are_sorted_disjoint_and_match_regex(name):
    ranges = getattr(spec, name)
    assert ranges and all(a <= b for a, b in ranges)
    assert all(b1 + 1 < a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:]))   # sorted, disjoint, merged
    pattern = re.compile(spec.regex_class(ranges))
    for a, b in ranges[:50] + ranges[-5:]:
        for cp in {a, b, (a + b) // 2}:
            if not 0xD800 <= cp <= 0xDFFF:
                assert spec.in_ranges(cp, ranges) and pattern.fullmatch(chr(cp))
        for cp in (a - 1, b + 1):
            if 0 <= cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF and not spec.in_ranges(cp, ranges):
                assert not pattern.fullmatch(chr(cp))
    assert spec.to_ranges(sorted(spec.expand(ranges))) == ranges


def test_known_members():
    assert spec.in_ranges(ord("\t"), spec.WHITESPACE_RANGES) and spec.in_ranges(0x3000, spec.WHITESPACE_RANGES)
    # \x0b, \x0c, \x85 are Cc: removed, not whitespace (differs from str.isspace and HF slow)
    for cp in (0x0B, 0x0C, 0x85, 0x00, 0xAD, 0x200B, 0xFEFF, 0xFFFD, 0xE000):
        assert spec.in_ranges(cp, spec.CONTROL_RANGES), hex(cp)
    assert not spec.in_ranges(0x0378, spec.CONTROL_RANGES)        # unassigned code points are kept
    assert "\x1c".isspace() and not spec.in_ranges(0x1C, spec.WHITESPACE_RANGES)   # a Cc: removed
    assert spec.in_ranges(0x1C, spec.CONTROL_RANGES)
    assert spec.in_ranges(ord("$"), spec.PUNCTUATION_RANGES) and spec.in_ranges(0x3002, spec.PUNCTUATION_RANGES)
    assert spec.in_ranges(0x4E2D, spec.CJK_RANGES) and not spec.in_ranges(0x3042, spec.CJK_RANGES)
    assert spec.in_ranges(0x0301, spec.NONSPACING_MARK_RANGES)
    assert spec.regex_class(((0x41, 0x43), (0x1F600, 0x1F600)), "re2") == "[\\x{41}-\\x{43}\\x{1F600}]"
    with pytest.raises(ValueError, match="flavor"):
        spec.regex_class(spec.CJK_RANGES, "pcre")


@pytest.mark.slow
def test_tables_equal_a_fresh_measurement_of_tokenizers():
    pytest.importorskip("tokenizers")
    path = os.path.join(os.path.dirname(__file__), "data", "make_tokenizer_golden.py")
    mod_spec = importlib.util.spec_from_file_location("make_tokenizer_golden", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    measured = mod.measure_char_tables()
    for name, value in measured.items():
        if name.endswith("_RANGES"):
            assert spec.to_ranges(value) == getattr(spec, name), name
        else:
            assert value == getattr(spec, name), name
