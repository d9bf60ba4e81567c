import datetime

import pytest

from ledgerly.money import Money
from ledgerly.recurring import Recurring, Schedule


def test_monthly_dates_clamp_to_month_end():
    schedule = Schedule(datetime.date(2024, 1, 15), day=31)
    assert list(schedule.dates(datetime.date(2024, 4, 30))) == [
        datetime.date(2024, 1, 31),
        datetime.date(2024, 2, 29),
        datetime.date(2024, 3, 31),
        datetime.date(2024, 4, 30),
    ]


def test_quarterly_across_the_year_end():
    schedule = Schedule(datetime.date(2024, 11, 1), day=1, interval=3)
    assert list(schedule.dates(datetime.date(2025, 6, 1))) == [
        datetime.date(2024, 11, 1),
        datetime.date(2025, 2, 1),
        datetime.date(2025, 5, 1),
    ]


def test_start_day_after_the_schedule_day_skips_that_month():
    schedule = Schedule(datetime.date(2024, 1, 20), day=5)
    assert list(schedule.dates(datetime.date(2024, 2, 10))) == [datetime.date(2024, 2, 5)]


def test_bad_schedules():
    with pytest.raises(ValueError, match="day must be within 1..31, got 0"):
        Schedule(datetime.date(2024, 1, 1), day=0)
    with pytest.raises(ValueError, match="at least one month"):
        Schedule(datetime.date(2024, 1, 1), day=1, interval=0)


def test_recurring_transactions_balance():
    rent = Recurring(
        "rent",
        [("expenses:rent", Money(80000)), ("assets:bank", Money(-80000))],
        Schedule(datetime.date(2024, 1, 1), day=1),
    )
    made = rent.transactions(datetime.date(2024, 3, 1))
    assert [t.date.month for t in made] == [1, 2, 3]
    assert made[2].postings[1].amount == Money(-80000)
