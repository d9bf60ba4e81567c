"""Recurring transactions: a template posted on a schedule of dates."""

import datetime
import calendar
from typing import Iterator, List, Tuple

from ledgerly.accounts import Posting, Transaction
from ledgerly.money import Money


class Schedule(object):
    """Every `interval` months on `day` (clamped to the month's last day)."""

    def __init__(self, start: datetime.date, day: int, interval: int = 1) -> None:
        if not 1 <= day <= 31:
            raise ValueError("day must be within 1..31, got {}".format(day))
        if interval < 1:
            raise ValueError("interval must be at least one month")
        self.start = start
        self.day = day
        self.interval = interval

    def dates(self, until: datetime.date) -> Iterator[datetime.date]:
        year, month = self.start.year, self.start.month
        while True:
            last = calendar.monthrange(year, month)[1]
            date = datetime.date(year, month, min(self.day, last))
            if date > until:
                return
            if date >= self.start:
                yield date
            month += self.interval
            year, month = year + (month - 1) // 12, (month - 1) % 12 + 1


class Recurring(object):
    def __init__(self, description: str, legs: List[Tuple[str, Money]], schedule: Schedule) -> None:
        self.description = description
        self.legs = legs
        self.schedule = schedule

    def transactions(self, until: datetime.date) -> List[Transaction]:
        return [
            Transaction(date, self.description, [Posting(account, amount) for account, amount in self.legs])
            for date in self.schedule.dates(until)
        ]
