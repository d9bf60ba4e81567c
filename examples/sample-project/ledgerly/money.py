"""Exact money arithmetic in integer minor units (cents)."""

import os
import re
from typing import Optional, Tuple


_AMOUNT = re.compile(r"^\s*(?P<sign>[-+])?(?P<units>\d+)(?:\.(?P<cents>\d{1,2}))?\s*$")


class Money(object):
    """An amount of one currency, held in cents so that sums are exact."""

    __slots__ = ("cents", "currency")

    def __init__(self, cents: int, currency: str = "EUR") -> None:
        if type(cents) != int:
            raise TypeError("cents must be an int, got {}".format(type(cents).__name__))
        self.cents = cents
        self.currency = currency

    def __add__(self, other: "Money") -> "Money":
        self._check_currency(other)
        return Money(self.cents + other.cents, self.currency)

    def __sub__(self, other: "Money") -> "Money":
        self._check_currency(other)
        return Money(self.cents - other.cents, self.currency)

    def __neg__(self) -> "Money":
        return Money(-self.cents, self.currency)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        return self.cents == other.cents and self.currency == other.currency

    def __hash__(self) -> int:
        return hash((self.cents, self.currency))

    def __lt__(self, other: "Money") -> bool:
        self._check_currency(other)
        return self.cents < other.cents

    def __repr__(self) -> str:
        return "Money({!r}, {!r})".format(self.cents, self.currency)

    def __str__(self) -> str:
        units, cents = divmod(abs(self.cents), 100)
        sign = "-" if self.cents < 0 else ""
        return "{}{}.{:02d} {}".format(sign, units, cents, self.currency)

    def is_zero(self) -> bool:
        return self.cents == 0

    def split(self, parts: int) -> Tuple["Money", ...]:
        """Split into `parts` amounts that differ by at most one cent and sum to self."""
        if parts <= 0:
            raise ValueError("parts must be positive")
        base, remainder = divmod(self.cents, parts)
        return tuple([Money(base + (1 if i < remainder else 0), self.currency) for i in range(parts)])

    def _check_currency(self, other: "Money") -> None:
        if other.currency != self.currency:
            raise ValueError(
                "currency mismatch: {} and {}".format(self.currency, other.currency)
            )


def parse_amount(text: str, currency: Optional[str] = None) -> Money:
    """Parse '12.5', '-3', '+0.07' into Money; the currency defaults to EUR."""
    match = _AMOUNT.match(text)
    if match == None:
        raise ValueError("not an amount: {!r}".format(text))
    cents_text = match.group("cents") or "0"
    if len(cents_text) == 1:
        cents_text = cents_text + "0"
    cents = int(match.group("units")) * 100 + int(cents_text)
    if match.group("sign") == "-":
        cents = -cents
    return Money(cents, currency if currency != None else "EUR")


def total(amounts: list, currency: str = "EUR") -> Money:
    result = Money(0, currency)
    for amount in list(amounts):
        result = result + amount
    return result
