import datetime
import json

from ledgerly.accounts import Ledger, Posting, Transaction
from ledgerly.export import to_csv, to_json
from ledgerly.money import Money
from ledgerly.parsing import parse_csv


def ledger():
    book = Ledger()
    book.open("assets:bank", "asset")
    book.open("expenses:rent", "expense")
    book.record(
        Transaction(
            datetime.date(2024, 5, 1),
            "rent",
            [Posting("expenses:rent", Money(95005)), Posting("assets:bank", Money(-95005))],
        )
    )
    return book


def test_csv_round_trips_through_the_parser():
    text = to_csv(ledger())
    assert text.splitlines()[1:] == [
        "1,2024-05-01,rent,expenses:rent,950.05",
        "1,2024-05-01,rent,assets:bank,-950.05",
    ]
    parsed = parse_csv(text)
    assert [p.amount for p in parsed[0].postings] == [Money(95005), Money(-95005)]


def test_json_document():
    document = json.loads(to_json(ledger()))
    assert document["accounts"] == {"assets:bank": "asset", "expenses:rent": "expense"}
    assert list(document["accounts"]) == ["assets:bank", "expenses:rent"]
    assert document["transactions"][0]["postings"][1] == {
        "account": "assets:bank",
        "cents": -95005,
        "currency": "EUR",
    }
