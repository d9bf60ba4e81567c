"""Monthly budget envelopes checked against a ledger's expense accounts."""

import datetime
import json
from typing import Dict, List, Optional

from ledgerly.accounts import Ledger
from ledgerly.money import Money


class Envelope(object):
    def __init__(self, account: str, limit: Money) -> None:
        self.account = account
        self.limit = limit

    def __repr__(self) -> str:
        return "Envelope({!r}, {})".format(self.account, self.limit)


class Budget(object):
    def __init__(self, envelopes: List[Envelope]) -> None:
        names = [envelope.account for envelope in envelopes]
        if len(set(names)) != len(names):
            raise ValueError("an account has two envelopes")
        self.envelopes = envelopes

    def spent(self, ledger: Ledger, month: datetime.date) -> Dict[str, Money]:
        """What each envelope's account spent in the month of `month`."""
        spent: Dict[str, Money] = {}
        for envelope in self.envelopes:
            total = Money(0, envelope.limit.currency)
            for transaction in ledger.transactions:
                if (transaction.date.year, transaction.date.month) != (month.year, month.month):
                    continue
                for posting in transaction.postings:
                    if posting.account == envelope.account:
                        total = total + posting.amount
            spent[envelope.account] = total
        return spent

    def overspent(self, ledger: Ledger, month: datetime.date) -> List[str]:
        spent = self.spent(ledger, month)
        over = [e.account for e in self.envelopes if e.limit < spent[e.account]]
        return list(sorted(over))

    def remaining(self, ledger: Ledger, month: datetime.date, account: str) -> Optional[Money]:
        for envelope in self.envelopes:
            if envelope.account == account:
                return envelope.limit - self.spent(ledger, month)[account]
        return None

    def summary(self, ledger: Ledger, month: datetime.date) -> str:
        spent = self.spent(ledger, month)
        lines = [f"Budget {month:%Y-%m}"]
        for envelope in self.envelopes:
            lines.append(
                "{}: {} of {}".format(envelope.account, spent[envelope.account], envelope.limit)
            )
        return "\n".join(lines)
