import datetime

from ledgerly import Ledger, Money, Posting, Transaction, balance_report, trial_balance


def make_ledger():
    ledger = Ledger()
    ledger.open("assets:bank", "asset")
    ledger.open("assets:cash", "asset")
    ledger.open("equity:opening", "equity")
    ledger.open("expenses:unused", "expense")
    ledger.record(
        Transaction(
            datetime.date(2024, 1, 1),
            "opening",
            [
                Posting("assets:bank", Money(100000)),
                Posting("assets:cash", Money(5050)),
                Posting("equity:opening", Money(-105050)),
            ],
        )
    )
    return ledger


def test_balance_report_layout():
    report = balance_report(make_ledger(), title="Balances")
    assert report.splitlines() == [
        "Balances",
        "========",
        "assets:bank          1000.00 EUR",
        "assets:cash            50.50 EUR",
        "equity:opening      -1050.50 EUR",
        "TOTAL asset          1050.50 EUR",
        "TOTAL equity        -1050.50 EUR",
    ]


def test_balance_report_without_title():
    report = balance_report(make_ledger())
    assert report.startswith("assets:bank ")
    assert report.endswith("\n")


def test_trial_balance():
    assert trial_balance(make_ledger())
    assert trial_balance(Ledger())
