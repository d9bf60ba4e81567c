import datetime

import pytest

from ledgerly.money import Money
from ledgerly.parsing import ParseError, parse_csv


GOOD = """id,date,description,account,amount
1,2024-03-01,rent,expenses:rent,950.00
1,2024-03-01,rent,assets:bank,-950
2,2024-03-02,groceries,expenses:food,42.5
2,2024-03-02,groceries,assets:bank,-42.50
"""


def test_parse_groups_rows_into_transactions():
    transactions = parse_csv(GOOD)
    assert [t.description for t in transactions] == ["rent", "groceries"]
    assert transactions[0].date == datetime.date(2024, 3, 1)
    assert [p.amount for p in transactions[1].postings] == [Money(4250), Money(-4250)]


def test_missing_columns():
    with pytest.raises(ParseError, match="line 1: missing columns: account, amount"):
        parse_csv("id,date,description\n1,2024-01-01,x\n")


def test_bad_date_names_line():
    text = GOOD.replace("2024-03-02,groceries,expenses", "2024-13-02,groceries,expenses")
    with pytest.raises(ParseError, match=r"line 4: bad date '2024-13-02'") as caught:
        parse_csv(text)
    assert caught.value.line == 4


def test_bad_amount_names_line():
    with pytest.raises(ParseError, match="line 3: not an amount"):
        parse_csv(GOOD.replace("-950\n", "-9x0\n"))


def test_unbalanced_transaction():
    with pytest.raises(ParseError, match="line 4: transaction 2: transaction does not balance"):
        parse_csv(GOOD.replace("-42.50", "-42.49"))


def test_currency_is_passed_through():
    assert parse_csv(GOOD, currency="CHF")[0].postings[0].amount == Money(95000, "CHF")
