import datetime

import pytest

from ledgerly.accounts import Ledger, Posting, Transaction
from ledgerly.budget import Budget, Envelope
from ledgerly.money import Money

MARCH = datetime.date(2024, 3, 1)


def ledger():
    book = Ledger()
    book.open("assets:bank", "asset")
    book.open("expenses:food", "expense")
    book.open("expenses:fun", "expense")
    for day, account, cents in [(3, "expenses:food", 12000), (9, "expenses:fun", 9000), (20, "expenses:food", 9000)]:
        book.record(
            Transaction(
                datetime.date(2024, 3, day),
                "spend",
                [Posting(account, Money(cents)), Posting("assets:bank", Money(-cents))],
            )
        )
    book.record(
        Transaction(
            datetime.date(2024, 4, 1),
            "april",
            [Posting("expenses:food", Money(50000)), Posting("assets:bank", Money(-50000))],
        )
    )
    return book


def budget():
    return Budget([Envelope("expenses:food", Money(20000)), Envelope("expenses:fun", Money(10000))])


def test_spent_counts_only_the_month():
    assert budget().spent(ledger(), MARCH) == {"expenses:food": Money(21000), "expenses:fun": Money(9000)}


def test_overspent_and_remaining():
    assert budget().overspent(ledger(), MARCH) == ["expenses:food"]
    assert budget().remaining(ledger(), MARCH, "expenses:fun") == Money(1000)
    assert budget().remaining(ledger(), MARCH, "expenses:rent") is None


def test_summary():
    assert budget().summary(ledger(), MARCH).splitlines() == [
        "Budget 2024-03",
        "expenses:food: 210.00 EUR of 200.00 EUR",
        "expenses:fun: 90.00 EUR of 100.00 EUR",
    ]


def test_duplicate_envelopes_refused():
    with pytest.raises(ValueError, match="two envelopes"):
        Budget([Envelope("a", Money(1)), Envelope("a", Money(2))])
    assert repr(Envelope("a", Money(1))) == "Envelope('a', 0.01 EUR)"
