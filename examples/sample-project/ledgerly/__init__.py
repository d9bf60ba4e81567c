"""ledgerly: a small double-entry ledger."""

from ledgerly.money import Money, parse_amount
from ledgerly.accounts import Account, Ledger, Posting, Transaction
from ledgerly.parsing import parse_csv
from ledgerly.report import balance_report, trial_balance

__all__ = [
    "Account",
    "Ledger",
    "Money",
    "Posting",
    "Transaction",
    "balance_report",
    "parse_amount",
    "parse_csv",
    "trial_balance",
]
