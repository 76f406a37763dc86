"""Canonical JSON is RFC 8785 (JCS): the RFC's own examples, and its refusals as detserve errors."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes, canonical_json
from detserve.errors import EXIT_INPUT, CanonicalJSONError


def _double(bits: int) -> float:
    value: float = struct.unpack(">d", bits.to_bytes(8, "big"))[0]
    return value


# RFC 8785 appendix B: IEEE 754 bit patterns and their JCS spelling.
RFC_NUMBERS = [
    (0x0000000000000000, "0"),
    (0x8000000000000000, "0"),
    (0x0000000000000001, "5e-324"),
    (0x8000000000000001, "-5e-324"),
    (0x7FEFFFFFFFFFFFFF, "1.7976931348623157e+308"),
    (0xFFEFFFFFFFFFFFFF, "-1.7976931348623157e+308"),
    (0x4340000000000000, "9007199254740992"),
    (0xC340000000000000, "-9007199254740992"),
    (0x4430000000000000, "295147905179352830000"),
    (0x44B52D02C7E14AF5, "9.999999999999997e+22"),
    (0x44B52D02C7E14AF6, "1e+23"),
    (0x44B52D02C7E14AF7, "1.0000000000000001e+23"),
    (0x444B1AE4D6E2EF4E, "999999999999999700000"),
    (0x444B1AE4D6E2EF4F, "999999999999999900000"),
    (0x444B1AE4D6E2EF50, "1e+21"),
    (0x3EB0C6F7A0B5ED8C, "9.999999999999997e-7"),
    (0x3EB0C6F7A0B5ED8D, "0.000001"),
    (0x41B3DE4355555553, "333333333.3333332"),
    (0x41B3DE4355555554, "333333333.33333325"),
    (0x41B3DE4355555555, "333333333.3333333"),
    (0x41B3DE4355555556, "333333333.3333334"),
    (0x41B3DE4355555557, "333333333.33333343"),
    (0xBECBF647612F3696, "-0.0000033333333333333333"),
    (0x43143FF3C1CB0959, "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), RFC_NUMBERS, ids=[e for _, e in RFC_NUMBERS])
def test_numbers_as_rfc_8785_appendix_b(bits: int, expected: str) -> None:
    assert canonical_json(_double(bits)) == expected


def test_rfc_8785_section_3_2_2_example() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    assert canonical_json(value) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


def test_keys_are_sorted_by_utf16_code_units() -> None:
    # RFC 8785 section 3.2.3: not by code points, where U+FB33 would sort before U+1F600.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert canonical_json(value) == canonical_json({k: value[k] for k in keys})
    assert canonical_json(value).startswith('{"\\r":"Carriage Return","1":"One","\u0080":')
    assert canonical_json(value).index("\U0001f600") < canonical_json(value).index("\ufb33")


def test_canonical_bytes_is_utf8_with_one_final_newline() -> None:
    assert canonical_bytes({"b": 0.0, "a": "é"}) == '{"a":"é","b":0}\n'.encode()


def test_integers_up_to_2_53_minus_1_are_exact() -> None:
    assert canonical_json([MAX_EXACT_INTEGER, -MAX_EXACT_INTEGER]) == (
        "[9007199254740991,-9007199254740991]"
    )


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        pytest.param(MAX_EXACT_INTEGER + 1, "9007199254740992", id="2**53"),
        pytest.param(-MAX_EXACT_INTEGER - 1, "-9007199254740992", id="-2**53"),
        pytest.param({"seed": 2**64}, "18446744073709551616", id="2**64-nested"),
        pytest.param(float("nan"), "nan", id="nan"),
        pytest.param([float("-inf")], "inf", id="infinity"),
        pytest.param({"text": "\ud800"}, "UTF-8", id="lone-surrogate"),
        pytest.param({1: "x"}, "keys must be strings", id="integer-key"),
        pytest.param({"x": object()}, "unsupported type", id="object"),
    ],
)
def test_what_jcs_cannot_write_is_a_detserve_error(value: Any, phrase: str) -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        canonical_bytes(value)
    assert caught.value.exit_code == EXIT_INPUT
    assert phrase in caught.value.message
    assert "RFC 8785" in caught.value.message


def test_deep_nesting_is_a_detserve_error() -> None:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(CanonicalJSONError, match="nested too deeply"):
        canonical_json(value)
