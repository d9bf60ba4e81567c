import pytest

from ledgerly.money import Money, parse_amount, total


def test_parse_amount_variants():
    assert parse_amount("12.5") == Money(1250)
    assert parse_amount("-3") == Money(-300)
    assert parse_amount("+0.07") == Money(7)
    assert parse_amount(" 4.20 ", "USD") == Money(420, "USD")


@pytest.mark.parametrize("text", ["", "abc", "1.234", "1,00", "--1"])
def test_parse_amount_rejects_garbage(text):
    with pytest.raises(ValueError, match="not an amount"):
        parse_amount(text)


def test_str_and_repr():
    assert str(Money(-1205)) == "-12.05 EUR"
    assert str(Money(7, "USD")) == "0.07 USD"
    assert repr(Money(3, "GBP")) == "Money(3, 'GBP')"


def test_arithmetic_and_ordering():
    assert Money(100) + Money(25) == Money(125)
    assert Money(100) - Money(125) == Money(-25)
    assert -Money(5) == Money(-5)
    assert Money(1) < Money(2)
    assert len({Money(1), Money(1), Money(2)}) == 2


def test_currency_mismatch():
    with pytest.raises(ValueError, match="currency mismatch: EUR and USD"):
        Money(1) + Money(1, "USD")


def test_cents_must_be_int():
    with pytest.raises(TypeError, match="cents must be an int, got float"):
        Money(1.5)


def test_split_is_exact():
    parts = Money(1000).split(3)
    assert parts == (Money(334), Money(333), Money(333))
    assert total(list(parts)) == Money(1000)
    with pytest.raises(ValueError):
        Money(1).split(0)


def test_total_of_nothing_is_zero():
    assert total([], "USD") == Money(0, "USD")
