"""Exact decimals at the edges: parsing user input and rendering JSON strings.

Money and amounts are :class:`~decimal.Decimal` everywhere and strings in JSON; no float
ever touches them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation, getcontext, localcontext
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: What ``DECIMAL(36,18)`` stores: less than this, with at most 18 decimal places.
MAX_AMOUNT = Decimal(10) ** 18
#: The context for arithmetic on amounts (see :func:`exact`). Python's default context keeps
#: 28 digits, so ``0 + Decimal("12345678901.123456789012345678")`` and even ``-amount`` come
#: out rounded; 60 digits hold every sum and product of two DECIMAL(36,18) values exactly
#: (and a quotient closely enough that rounding it down to 18 places is the exact floor).
EXACT = Context(prec=60)
_AMOUNT_QUANTUM = Decimal(1).scaleb(-18)
_AMOUNT_CONTEXT = Context(prec=40)  # 36 digits and some; the default context carries 28


def fits_amount(value: Decimal) -> bool:
    """Whether ``DECIMAL(36,18)`` stores ``value`` exactly (its sign aside)."""
    return (value.copy_abs() < MAX_AMOUNT
            and value.quantize(_AMOUNT_QUANTUM, context=_AMOUNT_CONTEXT) == value)


def exact(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` with :data:`EXACT` as the decimal context (of this thread).

    Inside one already (a placement calls a few dozen such functions per order), the context
    is not switched again: a ``localcontext`` costs about a microsecond each time.
    """

    @functools.wraps(function)
    def in_exact_context(*args: P.args, **kwargs: P.kwargs) -> R:
        if getcontext().prec >= EXACT.prec:
            return function(*args, **kwargs)
        with localcontext(EXACT):
            return function(*args, **kwargs)

    return in_exact_context


def to_str(value: Decimal | None) -> str | None:
    """``Decimal('12.500000000000000000')`` -> ``'12.5'``; never scientific notation."""
    if value is None:
        return None
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


#: What a decimal string may be made of. Decimal() also reads digit-group underscores
#: ("1_000") and any script's digits ("١٠٠"), which no exchange API takes as a number.
_DECIMAL_CHARS = frozenset("0123456789+-.eE")


_ASCII_DIGITS = frozenset("0123456789")


def parse_int(text: str) -> int | None:
    """An integer from ``[+-]?[0-9]+`` (surrounding blanks ignored), else None. ``int()``
    alone also reads ``"1_5"`` as 15 and other scripts' digits (``"١٠"`` as 10). None too for
    more digits than Python converts (``sys.get_int_max_str_digits()``, 4300): ``int()``
    raises ValueError there, and a query parameter must not make that a 500."""
    digits = text.strip()
    if digits[:1] in ("+", "-"):
        digits = digits[1:]
    if not digits or not _ASCII_DIGITS.issuperset(digits):
        return None
    try:
        return int(text)
    except ValueError:  # longer than the int/str conversion limit: no usable number anyway
        return None


def parse_decimal(value: object) -> Decimal | None:
    """A finite Decimal from a JSON string (ASCII digits, sign, point, exponent; surrounding
    blanks ignored) or integer, else None (floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not _DECIMAL_CHARS.issuperset(value):
            return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def decimal_places(value: Decimal) -> int:
    """How many decimal places ``value`` really has (trailing zeros do not count).

    Counted on the digits themselves: ``normalize()`` would round to its context's 28
    digits first, and ``123456789012345678.0000000000001`` would count 0 places.
    """
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # NaN, Infinity
        return 0
    zeros = len(digits) - len(bytes(digits).rstrip(b"\0"))
    return max(0, -(exponent + zeros)) if any(digits) else 0
