"""Import transactions from CSV: date,description,account,amount rows grouped by id."""

import csv
import datetime
import io
import sys
from typing import Dict, Iterable, List, Tuple

from ledgerly.accounts import Posting, Transaction
from ledgerly.money import parse_amount


class ParseError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super(ParseError, self).__init__("line {}: {}".format(line, message))
        self.line = line


REQUIRED_COLUMNS = ("id", "date", "description", "account", "amount")


def _parse_date(line: int, text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text.strip())
    except ValueError:
        raise ParseError(line, "bad date %r" % text)


def _rows(text: str) -> Iterable[Tuple[int, Dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise ParseError(1, "missing columns: {}".format(", ".join(missing)))
    for number, row in enumerate(reader, start=2):
        yield number, row


def parse_csv(text: str, currency: str = "EUR") -> List[Transaction]:
    """Group rows by their id column into balanced transactions, in file order."""
    groups: Dict[str, List[Tuple[int, Dict[str, str]]]] = {}
    order: List[str] = []
    for number, row in _rows(text):
        key = row["id"].strip()
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((number, row))
    transactions = []
    for key in order:
        rows = groups[key]
        first_line, first = rows[0]
        date = _parse_date(first_line, first["date"])
        postings = []
        for number, row in rows:
            try:
                amount = parse_amount(row["amount"], currency)
            except ValueError as error:
                raise ParseError(number, str(error))
            postings.append(Posting(row["account"].strip(), amount))
        try:
            transactions.append(Transaction(date, first["description"].strip(), postings))
        except ValueError as error:
            raise ParseError(first_line, "transaction {}: {}".format(key, error))
    return transactions
