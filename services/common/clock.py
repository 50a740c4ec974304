"""The China day: decision, report, publicity and list dates are China Standard Time calendar
days, whatever the machine's time zone (docs/design.md §4.3)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Final
from zoneinfo import ZoneInfo

#: China Standard Time as the time-zone database names it (UTC+8, no daylight saving since 1991).
CHINA_STANDARD_TIME: Final = ZoneInfo("Asia/Shanghai")


def china_today(now: datetime | None = None) -> date:
    """The calendar day in China Standard Time at ``now`` (default: the current instant).

    A naive ``now`` is read as the machine's local time, as :meth:`datetime.astimezone` does.
    """
    return (now or datetime.now(UTC)).astimezone(CHINA_STANDARD_TIME).date()
