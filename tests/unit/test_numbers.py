"""Exact decimals at the edges: stockex.numbers and db.quantize, no I/O."""

from __future__ import annotations

from decimal import Decimal

import pytest

from stockex.db import AmountOutOfRange, quantize
from stockex.numbers import decimal_places, parse_int


@pytest.mark.parametrize(("value", "places"), [
    ("100", 0), ("1E+3", 0), ("0.000", 0), ("0E-18", 0), ("1.50", 1), ("-2.5", 1),
    ("12.500000000000000000", 1), ("1e-30", 30),
    # More digits than the default 28-digit context: nothing may be rounded away first.
    ("123456789012345678.0000000000001", 13),
    ("1.0000000000000000000000000000000000000001", 40),
])
def test_decimal_places_counts_every_digit(value: str, places: int) -> None:
    assert decimal_places(Decimal(value)) == places


@pytest.mark.parametrize("value", ["1e18", "1e22", "-1e40", "1e999999", "Infinity", "NaN"])
def test_values_too_large_or_not_finite_are_out_of_range(value: str) -> None:
    with pytest.raises(AmountOutOfRange, match="does not fit"):
        quantize(Decimal(value))


def test_parse_int_refuses_more_digits_than_python_converts() -> None:
    # int() raises ValueError past 4300 digits; ?limit=111...1 was a 500 (and an alert)
    assert parse_int("1" * 5000) is None
    assert parse_int("-" + "9" * 4301) is None
    assert parse_int("1" * 4300) == int("1" * 4300)
