"""The one duration syntax of the CLI options and the settings (a leaf: imports nothing of ours).

``90m``, ``1h``, ``7d``, ``30s``, ``2w``, ``1h30m`` (a number and a unit, possibly several, any case,
spaces ignored), ISO 8601 (``PT1H``, ``P7D``) or ``HH:MM:SS``; never negative. Settings also take a
plain number of seconds; the CLI refuses a bare number (``--expire-after 7`` would be seven seconds).
"""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import TypeAdapter, ValidationError

__all__ = ["parse_duration", "seconds"]

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ISO = TypeAdapter(timedelta)


def parse_duration(text: str, *, bare_seconds: bool = False) -> timedelta:
    """``text`` as a timedelta; `ValueError` naming it when it is none (or a negative one).

    ``bare_seconds``: a plain number is that many seconds (settings); else it is refused (CLI).
    """
    compact = re.sub(r"\s+", "", text or "").lower()
    try:
        if bare_seconds and _NUMBER.fullmatch(compact):
            return timedelta(seconds=float(compact))
        if compact and not _PART.sub("", compact):
            return sum((timedelta(**{_UNITS[unit]: float(number)})
                        for number, unit in _PART.findall(compact)), timedelta(0))
        if compact and not _NUMBER.fullmatch(compact):  # ISO 8601 or HH:MM:SS, as pydantic reads them
            try:
                value = _ISO.validate_python(compact.upper() if compact.startswith("p")
                                             else (text or "").strip())
            except ValidationError:
                pass
            else:
                if value >= timedelta(0):
                    return value
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None
    raise ValueError(f"{text!r} is not a duration such as 90m, 1h or 7d")


def seconds(text: str) -> float:
    """``text`` (a duration, or a plain number of seconds) in seconds."""
    return parse_duration(text, bare_seconds=True).total_seconds()
