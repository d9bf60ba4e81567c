"""Plain-text reports over a ledger."""

import os
from typing import List, Optional

from ledgerly.accounts import Ledger
from ledgerly.money import Money


def _line(name: str, amount: Money, width: int) -> str:
    return "{}{}".format(name.ljust(width), str(amount).rjust(16))


def balance_report(ledger: Ledger, title: Optional[str] = None) -> str:
    """One line per account with a non-zero balance, then the total per account type."""
    balances = ledger.balances()
    names = [name for name in balances if not balances[name].is_zero()]
    width = max([len(name) for name in names] + [len("TOTAL")]) + 2
    lines: List[str] = []
    if title != None:
        lines.append(title)
        lines.append("=" * len(title))
    for name in names:
        lines.append(_line(name, balances[name], width))
    for kind in sorted(set([ledger.accounts[name].kind for name in names])):
        amounts = [balances[name] for name in names if ledger.accounts[name].kind == kind]
        subtotal = amounts[0]
        for amount in amounts[1:]:
            subtotal = subtotal + amount
        lines.append(_line("TOTAL %s" % kind, subtotal, width))
    return "\n".join(lines) + "\n"


def trial_balance(ledger: Ledger) -> bool:
    """True when the debits equal the credits over every account."""
    balances = list(ledger.balances().values())
    if len(balances) == 0:
        return True
    overall = balances[0]
    for amount in balances[1:]:
        overall = overall + amount
    return overall.is_zero() == True
