"""Wall-clock time for the shell. Only timestamps for people come from here; sync never uses it."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp(when: dt.datetime | None = None) -> str:
    """RFC 3339 UTC with millisecond precision and a Z, as the wire models require."""
    when = when or utc_now()
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
