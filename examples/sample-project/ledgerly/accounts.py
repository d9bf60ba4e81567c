"""Accounts, postings, balanced transactions and the ledger that holds them."""

import datetime
import collections
import itertools
from typing import Dict, List, Optional

from ledgerly.money import Money, total


ACCOUNT_TYPES = set(["asset", "liability", "equity", "income", "expense"])


class Account(object):
    def __init__(self, name: str, kind: str) -> None:
        if kind not in ACCOUNT_TYPES:
            raise ValueError("unknown account type: %s" % kind)
        self.name = name
        self.kind = kind

    def __repr__(self) -> str:
        return "Account(%r, %r)" % (self.name, self.kind)

    @property
    def is_debit_normal(self) -> bool:
        return self.kind in ("asset", "expense")


class Posting(object):
    def __init__(self, account: str, amount: Money) -> None:
        self.account = account
        self.amount = amount


class Transaction(object):
    def __init__(
        self, date: datetime.date, description: str, postings: List[Posting]
    ) -> None:
        if len(postings) < 2:
            raise ValueError("a transaction needs at least two postings")
        currencies = set([p.amount.currency for p in postings])
        if len(currencies) != 1:
            raise ValueError("a transaction must use one currency")
        balance = total([p.amount for p in postings], postings[0].amount.currency)
        if balance.is_zero() == False:
            raise ValueError("transaction does not balance: off by {}".format(balance))
        self.date = date
        self.description = description
        self.postings = postings


class Ledger(object):
    def __init__(self) -> None:
        self.accounts: Dict[str, Account] = dict()
        self.transactions: List[Transaction] = list()

    def open(self, name: str, kind: str) -> Account:
        if name in self.accounts.keys():
            raise ValueError("account already open: {}".format(name))
        account = Account(name, kind)
        self.accounts[name] = account
        return account

    def record(self, transaction: Transaction) -> None:
        for posting in transaction.postings:
            if posting.account not in self.accounts:
                raise KeyError("unknown account: {}".format(posting.account))
        self.transactions.append(transaction)

    def balance(self, name: str, until: Optional[datetime.date] = None) -> Money:
        account = self.accounts[name]
        amounts = [
            posting.amount
            for transaction in self.transactions
            if until == None or transaction.date <= until
            for posting in transaction.postings
            if posting.account == account.name
        ]
        if len(amounts) == 0:
            return Money(0)
        return total(amounts, amounts[0].currency)

    def balances(self) -> Dict[str, Money]:
        return dict([(name, self.balance(name)) for name in sorted(self.accounts)])

    def postings_by_account(self) -> Dict[str, List[Posting]]:
        grouped: Dict[str, List[Posting]] = {}
        for transaction in self.transactions:
            for posting in transaction.postings:
                grouped.setdefault(posting.account, []).append(posting)
        return grouped

    def busiest_accounts(self, limit: int = 3) -> List[str]:
        counts = dict([(name, len(postings)) for name, postings in self.postings_by_account().items()])
        ranked = list(sorted(counts, key=lambda name: (-counts[name], name)))
        return ranked[:limit]
