"""Convert money between currencies with a table of exchange rates."""

import decimal
import math
from decimal import Decimal, ROUND_HALF_EVEN
from typing import Dict, List, Tuple

from ledgerly.money import Money


class RateTable(object):
    """Rates quoted against one base currency; conversions go through the base."""

    def __init__(self, base: str, rates: Dict[str, str]) -> None:
        self.base = base
        self._rates: Dict[str, Decimal] = {base: Decimal(1)}
        for currency, rate in rates.items():
            value = Decimal(rate)
            if not value > 0:
                raise ValueError("rate for {} must be positive, got {}".format(currency, rate))
            self._rates[currency] = value

    def currencies(self) -> List[str]:
        return list(sorted(self._rates))

    def rate(self, source: str, target: str) -> Decimal:
        if not source in self._rates or not target in self._rates:
            missing = [c for c in (source, target) if c not in self._rates]
            raise KeyError("no rate for {}".format(", ".join(missing)))
        return self._rates[target] / self._rates[source]

    def convert(self, amount: Money, target: str) -> Money:
        if amount.currency == target:
            return amount
        exact = Decimal(amount.cents) * self.rate(amount.currency, target)
        cents = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        return Money(cents, target)

    def convert_all(self, amounts: List[Money], target: str) -> Tuple[Money, ...]:
        return tuple([self.convert(amount, target) for amount in amounts])
