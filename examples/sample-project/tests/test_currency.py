from decimal import Decimal

import pytest

from ledgerly.currency import RateTable
from ledgerly.money import Money


def table():
    return RateTable("EUR", {"USD": "1.10", "JPY": "160"})


def test_currencies_sorted():
    assert table().currencies() == ["EUR", "JPY", "USD"]


def test_rates_go_through_the_base():
    assert table().rate("EUR", "USD") == Decimal("1.10")
    assert table().rate("USD", "JPY") == Decimal("160") / Decimal("1.10")


def test_convert_rounds_half_even():
    assert table().convert(Money(1000), "USD") == Money(1100, "USD")
    assert table().convert(Money(5, "USD"), "EUR") == Money(5, "EUR")  # 4.545... -> 5
    assert table().convert(Money(250), "EUR") == Money(250)


def test_convert_all_keeps_order():
    assert table().convert_all([Money(100), Money(200, "USD")], "EUR") == (Money(100), Money(182))


def test_unknown_currency_and_bad_rate():
    with pytest.raises(KeyError, match="no rate for CHF"):
        table().rate("CHF", "EUR")
    with pytest.raises(ValueError, match="rate for XXX must be positive, got 0"):
        RateTable("EUR", {"XXX": "0"})
