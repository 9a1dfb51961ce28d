"""The numeric bounds every layer checks input against: one place, imported by anyone (a leaf).

Ids (Mailivery campaign ids, our delivery ids) live in signed 64-bit columns (``BIGINT`` on
PostgreSQL, ``INTEGER`` on SQLite), and Mailivery's campaign ids are positive integers: a valid id is
an ``int`` (never a ``bool``) in ``1..MAX_ID``. Anything else cannot exist, so it is refused as bad
input before it reaches the database (where it would be an ``OverflowError`` or a `StorageError`)
or Mailivery.
"""

from __future__ import annotations

from typing import Any, Final, TypeGuard

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_EXACT_FLOAT_ID",
    "MAX_ID",
    "MAX_ID_DIGITS",
    "MAX_LIMIT",
    "is_id",
]

#: The largest id: a signed 64-bit integer.
MAX_ID: Final = 2**63 - 1
#: Digits of `MAX_ID`; longer numeric strings are refused without converting them.
MAX_ID_DIGITS: Final = len(str(MAX_ID))
#: Integral floats are read as ids only below this: from 2**53 on a float no longer names one integer.
MAX_EXACT_FLOAT_ID: Final = 2**53
#: The largest ``limit`` a listing takes (``limit=None`` means all of them).
MAX_LIMIT: Final = 1_000_000
#: The webhook receiver's defaults: the largest body it reads, and the seconds a body may take to arrive.
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024
DEFAULT_BODY_TIMEOUT: Final = 10.0


def is_id(value: Any) -> TypeGuard[int]:
    """True for an ``int`` (not a ``bool``) in ``1..MAX_ID``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID
