"""Export a ledger as CSV (the format parsing.parse_csv reads) or as JSON."""

import csv
import io
import json
import os
from typing import Any, Dict, List

from ledgerly.accounts import Ledger


def _amount_text(cents: int) -> str:
    units, rest = divmod(abs(cents), 100)
    return "{}{}.{:02d}".format("-" if cents < 0 else "", units, rest)


def to_csv(ledger: Ledger) -> str:
    """One row per posting; the row id groups the postings of a transaction."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "date", "description", "account", "amount"])
    for number, transaction in enumerate(ledger.transactions, start=1):
        for posting in transaction.postings:
            writer.writerow(
                [
                    str(number),
                    transaction.date.isoformat(),
                    transaction.description,
                    posting.account,
                    _amount_text(posting.amount.cents),
                ]
            )
    return buffer.getvalue()


def to_records(ledger: Ledger) -> List[Dict[str, Any]]:
    records = []
    for transaction in ledger.transactions:
        records.append(
            {
                "date": transaction.date.isoformat(),
                "description": transaction.description,
                "postings": [
                    {"account": p.account, "cents": p.amount.cents, "currency": p.amount.currency}
                    for p in transaction.postings
                ],
            }
        )
    return records


def to_json(ledger: Ledger, indent: int = 2) -> str:
    accounts = dict((name, account.kind) for name, account in sorted(ledger.accounts.items()))
    return json.dumps({"accounts": accounts, "transactions": to_records(ledger)}, indent=indent)
