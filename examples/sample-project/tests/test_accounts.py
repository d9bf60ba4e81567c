import datetime

import pytest

from ledgerly.accounts import Account, Ledger, Posting, Transaction
from ledgerly.money import Money


DAY1 = datetime.date(2024, 1, 1)
DAY2 = datetime.date(2024, 1, 2)


def make_ledger():
    ledger = Ledger()
    ledger.open("assets:bank", "asset")
    ledger.open("income:salary", "income")
    ledger.open("expenses:food", "expense")
    ledger.record(
        Transaction(DAY1, "pay", [Posting("assets:bank", Money(300000)), Posting("income:salary", Money(-300000))])
    )
    ledger.record(
        Transaction(DAY2, "lunch", [Posting("expenses:food", Money(1250)), Posting("assets:bank", Money(-1250))])
    )
    return ledger


def test_account_kinds():
    assert Account("a", "asset").is_debit_normal
    assert not Account("b", "income").is_debit_normal
    assert repr(Account("c", "equity")) == "Account('c', 'equity')"
    with pytest.raises(ValueError, match="unknown account type: cash"):
        Account("d", "cash")


def test_transaction_must_balance():
    with pytest.raises(ValueError, match="off by 0.01 EUR"):
        Transaction(DAY1, "x", [Posting("a", Money(101)), Posting("b", Money(-100))])
    with pytest.raises(ValueError, match="at least two postings"):
        Transaction(DAY1, "x", [Posting("a", Money(0))])
    with pytest.raises(ValueError, match="one currency"):
        Transaction(DAY1, "x", [Posting("a", Money(1)), Posting("b", Money(-1, "USD"))])


def test_balances():
    ledger = make_ledger()
    assert ledger.balance("assets:bank") == Money(298750)
    assert ledger.balance("assets:bank", until=DAY1) == Money(300000)
    assert ledger.balances() == {
        "assets:bank": Money(298750),
        "expenses:food": Money(1250),
        "income:salary": Money(-300000),
    }
    assert list(ledger.balances()) == ["assets:bank", "expenses:food", "income:salary"]


def test_unused_account_has_zero_balance():
    ledger = make_ledger()
    ledger.open("equity:opening", "equity")
    assert ledger.balance("equity:opening") == Money(0)


def test_record_rejects_unknown_account():
    ledger = make_ledger()
    with pytest.raises(KeyError):
        ledger.record(Transaction(DAY1, "x", [Posting("nowhere", Money(1)), Posting("assets:bank", Money(-1))]))
    assert len(ledger.transactions) == 2


def test_open_twice_fails():
    ledger = make_ledger()
    with pytest.raises(ValueError, match="already open: assets:bank"):
        ledger.open("assets:bank", "asset")


def test_busiest_accounts():
    ledger = make_ledger()
    assert ledger.busiest_accounts() == ["assets:bank", "expenses:food", "income:salary"]
    assert ledger.busiest_accounts(limit=1) == ["assets:bank"]
    assert ledger.postings_by_account()["assets:bank"][1].amount == Money(-1250)
