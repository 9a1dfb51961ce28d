"""Persistence: engines, guarded updates and queries over the three tables.

Every state change is one guarded ``UPDATE … WHERE id = ? AND version = ? AND state = ?`` plus its audit
``INSERT`` in the same transaction, so two workers can never both move a mailbox. A side-effecting
transition first *claims* the row (a short lease with the intent it is about to carry out), makes the
Mailivery call with no transaction open, then commits the new state only if it still holds the claim.

SQLite runs in WAL mode with a busy timeout, and write transactions start with ``BEGIN IMMEDIATE`` so
that concurrent writers queue instead of failing on a lock upgrade. PostgreSQL URLs use psycopg 3.
SQLAlchemy errors are translated to `StorageError` here, at the boundary.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from functools import lru_cache, wraps
from typing import Any, Literal, NamedTuple, ParamSpec, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ._bounds import is_id
from ._direct import Direct, EngineRunner, Runner, Statement
from .errors import ConfigurationError, DuplicateMailbox, MailboxFlowError, StorageError
from .models import ACTIVE_PREDICATE, MailboxRow, TransitionRow, WebhookDeliveryRow, metadata, utcnow
from .states import ACTIVE_STATES, STATE_BY_VALUE, State
from .types import AuditEntry, Delivery, Mailbox, Source

__all__ = ["Finish", "Move", "Store", "database_url_of", "make_engine"]

P = ParamSpec("P")
R = TypeVar("R")

MAILBOX: sa.Table = MailboxRow.__table__  # type: ignore[attr-defined]
AUDIT: sa.Table = TransitionRow.__table__  # type: ignore[attr-defined]
INBOX: sa.Table = WebhookDeliveryRow.__table__  # type: ignore[attr-defined]

_MAILBOX_COLS = [MAILBOX.c[f.name] for f in fields(Mailbox)]
_AUDIT_COLS = [AUDIT.c[f.name] for f in fields(AuditEntry)]
_INBOX_COLS = [INBOX.c[f.name] for f in fields(Delivery)]


def make_engine(
    database_url: str, *, echo: bool | Literal["debug"] = False, pool_size: int = 20,
    max_overflow: int = 10,
) -> Engine:
    """An engine tuned for mailbox_flow: SQLite in WAL mode, or PostgreSQL through psycopg 3.

    ``pool_size``/``max_overflow`` size PostgreSQL's connection pool (see `Settings.db_pool_size`).
    Raises `ConfigurationError` for a malformed URL or a database whose driver is not installed.

    The engine never logs result rows (they hold OAuth URLs and correlation tokens), not even with the
    ``sqlalchemy.engine`` logger at DEBUG, unless asked with ``echo="debug"`` (or, later,
    ``engine.echo = "debug"``); SQL statements are logged as usual, without their parameters.
    """
    url = database_url_of(database_url)
    try:
        return _without_rows(_create_engine(url, echo=echo, pool_size=pool_size,
                                            max_overflow=max_overflow))
    except NoSuchModuleError:
        raise ConfigurationError(
            f"unknown database {url.drivername!r} in database_url: mailbox_flow supports sqlite and "
            "postgresql"
        ) from None
    except ImportError as exc:
        hint = ("pip install 'mailbox-flow[postgres]'" if url.get_backend_name() == "postgresql"
                else "mailbox_flow supports sqlite and postgresql")
        raise ConfigurationError(
            f"the {url.get_backend_name()} driver is not installed ({exc.name or exc}): {hint}"
        ) from exc


def database_url_of(database_url: str) -> sa.URL:
    """``database_url`` parsed, with PostgreSQL's spellings mapped to psycopg 3: the one place that reads
    a database URL (engines, Alembic, the test helpers).

    ``postgres://`` (what most hosting providers hand out), ``postgresql://`` (SQLAlchemy's default
    driver would be psycopg2) and ``postgresql+psycopg2://`` all become ``postgresql+psycopg://``;
    ``postgres+<driver>://`` becomes ``postgresql+<driver>://``. Raises `ConfigurationError` for a
    string that is not a URL.
    """
    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError):
        raise ConfigurationError(  # (the URL itself may hold a password: it is not repeated)
            "database_url is not a database URL; expected e.g. sqlite:///mailbox_flow.db or "
            "postgresql://user@host/dbname"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        url = url.set(drivername=f"postgresql+{driver if driver not in ('', 'psycopg2') else 'psycopg'}")
    return url


def _create_engine(url: sa.URL, *, echo: bool | Literal["debug"], pool_size: int,
                   max_overflow: int) -> Engine:
    # hide_parameters: SQL logging (echo, or the sqlalchemy.engine logger at INFO) and the messages of
    # database errors leave the values out: they include OAuth URLs, correlation tokens, webhook bodies.
    backend = url.get_backend_name()
    if backend == "sqlite":
        memory = url.database in (None, "", ":memory:")
        engine = sa.create_engine(
            url,
            echo=echo,
            hide_parameters=True,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
        )
        _tune_sqlite(engine, wal=not memory)
        return engine
    if backend == "postgresql":
        # No pre-ping (a round trip per checkout); a dropped connection is invalidated on its first
        # error (StorageError to the caller, 503 at the web edge) and replaced on the next checkout.
        return sa.create_engine(url, echo=echo, hide_parameters=True, pool_recycle=1800,
                                pool_size=pool_size, max_overflow=max_overflow)
    return sa.create_engine(url, echo=echo, hide_parameters=True)


class _RowlessLogger:
    """An engine's logger with its DEBUG output (result rows) switched off; INFO and up (SQL
    statements, without their parameters) pass to the logger it wraps."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def isEnabledFor(self, level: int) -> bool:  # (logging's spelling)
        return level > logging.DEBUG and bool(self.inner.isEnabledFor(level))

    def getEffectiveLevel(self) -> int:
        return max(int(self.inner.getEffectiveLevel()), logging.INFO)

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if level > logging.DEBUG:
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.inner.log(level, msg, *args, **kwargs)

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        pass

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    warn = warning

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=True, **kwargs)

    def critical(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.CRITICAL, msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _without_rows(engine: Engine) -> Engine:
    """Keep result rows out of the engine's log unless it was made with ``echo="debug"``.

    SQLAlchemy logs every fetched row when its engine logger is enabled for DEBUG (a host setting
    ``sqlalchemy.engine`` to DEBUG for its own queries); this engine's logger then answers "not for
    DEBUG". Setting ``engine.echo`` afterwards replaces the logger: that is an explicit opt-in.
    """
    if engine.echo != "debug":
        engine.logger = _RowlessLogger(engine.logger)  # type: ignore[assignment]
    return engine


def _tune_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_conn.cursor()
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if not conn.get_execution_options().get("mailbox_flow_read"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # reads run in autocommit, one statement each


def _storage_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Translate SQLAlchemy's errors to `StorageError` (ours pass through)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MailboxFlowError:
            raise
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            text = str(cause).lower()
            if "no such table" in text or ("relation" in text and "does not exist" in text):
                raise StorageError(
                    "the database has no mailbox_flow tables yet: run `mailbox-flow db upgrade` "
                    "(or flow.create_schema())"
                ) from exc
            raise StorageError(f"database error in {func.__name__}: {type(cause).__name__}") from exc

    return wrapper


def _to_audit(data: dict[str, Any]) -> AuditEntry:
    data["from_state"] = State(data["from_state"])
    data["to_state"] = State(data["to_state"])
    data["source"] = Source(data["source"])
    data["detail"] = data["detail"] or {}
    return AuditEntry(**data)


_STATE_AT = [column.name for column in _MAILBOX_COLS].index("state")
_BODY_AT = [column.name for column in _INBOX_COLS].index("body")


_T = TypeVar("_T")


def _maker(cls: type[_T]) -> Callable[[list[Any]], _T]:
    """Build ``cls`` (a frozen, slotted dataclass) from values in field order, as its ``__init__`` would.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; setting the slots
    directly is about 40% cheaper, which counts when the reconciler turns thousands of rows into
    snapshots. Only for classes whose ``__init__`` does nothing else (no defaults, no ``__post_init__``).
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    assert getattr(cls, "__slots__", None) == tuple(names) and not hasattr(cls, "__post_init__")
    setters = tuple(getattr(cls, name).__set__ for name in names)
    new = object.__new__

    def make(values: list[Any]) -> _T:
        made = new(cls)
        for set_value, value in zip(setters, values, strict=True):
            set_value(made, value)
        return made

    return make


_new_mailbox = _maker(Mailbox)
_new_delivery = _maker(Delivery)


def _mailbox_of(values: list[Any]) -> Mailbox:
    """A `Mailbox` from a row's values (in ``_MAILBOX_COLS`` order: every mailbox query selects them)."""
    values[_STATE_AT] = STATE_BY_VALUE[values[_STATE_AT]]
    return _new_mailbox(values)


def _delivery_of(values: list[Any]) -> Delivery:
    values[_BODY_AT] = bytes(values[_BODY_AT])
    return _new_delivery(values)


def _not_leased(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(MAILBOX.c.lease_until.is_(None), MAILBOX.c.lease_until < now)


def _p(name: str, column: sa.Column[Any]) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=column.type)


# Prebuilt statements for the hot path: built once, so SQLAlchemy neither rebuilds nor re-keys them
# per call (a statement built per call costs about as much as the database work itself).
_GET = sa.select(*_MAILBOX_COLS).where(MAILBOX.c.id == _p("g_id", MAILBOX.c.id))
_GET_BY_CAMPAIGN = sa.select(*_MAILBOX_COLS).where(
    MAILBOX.c.campaign_id == _p("g_campaign", MAILBOX.c.campaign_id)
)
# The active-state condition written as the partial unique index's predicate (so the planner uses
# that index, and the statement has no IN-list parameters to expand per execution).
_FIND_ACTIVE = sa.select(*_MAILBOX_COLS).where(
    MAILBOX.c.email == _p("g_email", MAILBOX.c.email), sa.text(ACTIVE_PREDICATE)
)
# A webhook's two lookups in one read: the mailbox linked to its campaign, and the live one of its
# address (each through its own unique index).
_MATCH = sa.select(*_MAILBOX_COLS).where(
    sa.or_(
        MAILBOX.c.campaign_id == _p("g_campaign", MAILBOX.c.campaign_id),
        sa.and_(MAILBOX.c.email == _p("g_email", MAILBOX.c.email), sa.text(ACTIVE_PREDICATE)),
    )
)
_GUARD = (
    MAILBOX.c.id == _p("g_id", MAILBOX.c.id),
    MAILBOX.c.version == _p("g_version", MAILBOX.c.version),
    MAILBOX.c.state == _p("g_state", MAILBOX.c.state),
)
_FREE = sa.or_(MAILBOX.c.lease_until.is_(None), MAILBOX.c.lease_until < _p("g_now", MAILBOX.c.lease_until))
_CLAIM = (
    sa.update(MAILBOX)
    .where(*_GUARD, _FREE)
    .values(
        version=MAILBOX.c.version + 1,
        lease_owner=_p("v_owner", MAILBOX.c.lease_owner),
        lease_until=_p("v_until", MAILBOX.c.lease_until),
        intent_trigger=_p("v_trigger", MAILBOX.c.intent_trigger),
        intent_request_id=_p("v_request_id", MAILBOX.c.intent_request_id),
        intent_at=_p("v_now", MAILBOX.c.intent_at),
        updated_at=_p("v_now", MAILBOX.c.updated_at),
    )
    .returning(*_MAILBOX_COLS)
)
_CLEARED_ON_TRANSITION: dict[str, Any] = {
    "lease_owner": None,
    "lease_until": None,
    "intent_trigger": None,
    "intent_request_id": None,
    "intent_at": None,
    "attempts": 0,
    "last_error": None,
    "next_attempt_at": None,
    "flag_reason": None,
    "flagged_at": None,
}
_AUDIT_INSERT = sa.insert(AUDIT)
_MAILBOX_INSERT = sa.insert(MAILBOX).returning(*_MAILBOX_COLS)
# The stuck/expired scans' keyset pages: the first, and every next one after (changed_at, id).
_SCAN_STATE_WHERE = (
    MAILBOX.c.state == _p("g_state", MAILBOX.c.state),
    MAILBOX.c.state_changed_at < _p("g_before", MAILBOX.c.state_changed_at),
)
_SCAN_STATE_FIRST = (
    sa.select(*_MAILBOX_COLS)
    .where(*_SCAN_STATE_WHERE)
    .order_by(MAILBOX.c.state_changed_at, MAILBOX.c.id)
    .limit(sa.bindparam("g_limit", type_=sa.Integer))
)
_SCAN_STATE_NEXT = _SCAN_STATE_FIRST.where(
    MAILBOX.c.state_changed_at >= _p("g_after_at", MAILBOX.c.state_changed_at),
    sa.or_(
        MAILBOX.c.state_changed_at > _p("g_after_at", MAILBOX.c.state_changed_at),
        MAILBOX.c.id > _p("g_after_id", MAILBOX.c.id),
    ),
)
_INBOX_INSERT = sa.insert(INBOX).returning(*_INBOX_COLS)
# A repeated dedupe key inserts nothing and returns no row (no error, no exception to unwind).
_INBOX_INSERT_NEW = {
    name: module.insert(INBOX)
    .on_conflict_do_nothing(index_elements=[INBOX.c.dedupe_key])
    .returning(*_INBOX_COLS)
    for name, module in (("postgresql", postgresql), ("sqlite", sqlite))
}
_GET_DELIVERY = sa.select(*_INBOX_COLS).where(INBOX.c.id == _p("g_id", INBOX.c.id))
# Take a stored delivery: compare-and-set on its attempt count (one row back when this caller won).
_CLAIM_DELIVERY = (
    sa.update(INBOX)
    .where(
        INBOX.c.id == _p("g_id", INBOX.c.id),
        INBOX.c.attempts == _p("g_attempts", INBOX.c.attempts),
        INBOX.c.status.in_([sa.literal("received", INBOX.c.status.type),
                            sa.literal("failed", INBOX.c.status.type)]),
    )
    .values(attempts=INBOX.c.attempts + 1)
    .returning(INBOX.c.id)
)
_GET_DELIVERY_BY_KEY = sa.select(*_INBOX_COLS).where(
    INBOX.c.dedupe_key == _p("g_key", INBOX.c.dedupe_key)
)
# A repeated delivery: the one first stored under its key, and the mailbox of its campaign, in one read.
_ORIGINAL_AND_MAILBOX = (
    sa.select(*_INBOX_COLS, *_MAILBOX_COLS)
    .select_from(
        INBOX.outerjoin(MAILBOX, MAILBOX.c.campaign_id == _p("g_campaign", MAILBOX.c.campaign_id))
    )
    .where(INBOX.c.dedupe_key == _p("g_key", INBOX.c.dedupe_key))
)
_TOUCH_DELIVERY = (
    sa.update(INBOX).where(INBOX.c.id == _p("g_id", INBOX.c.id)).values(attempts=INBOX.c.attempts + 1)
)
_FINISH_DELIVERY = (
    sa.update(INBOX)
    .where(INBOX.c.id == _p("g_id", INBOX.c.id))
    .values(
        status=_p("v_status", INBOX.c.status),
        outcome=_p("v_outcome", INBOX.c.outcome),
        error=_p("v_error", INBOX.c.error),
        mailbox_id=_p("v_mailbox_id", INBOX.c.mailbox_id),
        processed_at=_p("v_now", INBOX.c.processed_at),
    )
)


_HISTORY = sa.select(*_AUDIT_COLS).where(AUDIT.c.mailbox_id == _p("g_id", AUDIT.c.mailbox_id)).order_by(
    AUDIT.c.id
)
_AUDIT_NAMES = [column.name for column in _AUDIT_COLS]


@lru_cache(maxsize=16)
def _list_statement(by_state: bool, by_owner: bool, changed: bool, limited: bool) -> sa.Select[Any]:
    """``Store.mailboxes`` for one combination of filters (one state at most), oldest first."""
    query = sa.select(*_MAILBOX_COLS)
    if by_state:
        query = query.where(MAILBOX.c.state == _p("g_state", MAILBOX.c.state))
    if by_owner:
        query = query.where(MAILBOX.c.owner_id == _p("g_owner", MAILBOX.c.owner_id))
    if changed:
        query = query.where(MAILBOX.c.state_changed_at < _p("g_before", MAILBOX.c.state_changed_at))
    query = query.order_by(MAILBOX.c.created_at, MAILBOX.c.id)
    return query.limit(sa.bindparam("g_limit", type_=sa.Integer)) if limited else query


@lru_cache(maxsize=128)
def _transition_statement(by_owner: bool, extra: tuple[str, ...]) -> sa.Update:
    """The guarded UPDATE ... RETURNING of a transition, one per (guard kind, extra columns)."""
    lease_guard = (MAILBOX.c.lease_owner == _p("g_owner", MAILBOX.c.lease_owner)) if by_owner else _FREE
    values: dict[str, Any] = {
        "state": _p("v_state", MAILBOX.c.state),
        "version": MAILBOX.c.version + 1,
        "state_changed_at": _p("v_now", MAILBOX.c.state_changed_at),
        "updated_at": _p("v_now", MAILBOX.c.updated_at),
        **_CLEARED_ON_TRANSITION,
    }
    for key in extra:
        values[key] = _p(f"x_{key}", MAILBOX.c[key])
    return sa.update(MAILBOX).where(*_GUARD, lease_guard).values(values).returning(*_MAILBOX_COLS)


_AUDIT_FIELDS = ("trigger", "from_state", "to_state", "at", "source", "request_id", "detail")
_AUDIT_KEYS = ("mailbox_id", *_AUDIT_FIELDS)
_INBOX_KEYS = tuple(column.name for column in INBOX.columns if column.name != "id")


@lru_cache(maxsize=128)
def _pg_transition_statement(by_owner: bool, extra: tuple[str, ...], finish: bool = False
                             ) -> sa.Select[Any]:
    """PostgreSQL: the guarded UPDATE and its audit INSERT as one statement (a data-modifying CTE).

    One round trip, atomic on its own, so it runs without BEGIN/COMMIT; no audit row when the guard
    fails, since the INSERT selects from the UPDATE's RETURNING. With ``finish``, the same statement
    finishes the webhook delivery that caused the transition (only when it moved).
    """
    moved = _transition_statement(by_owner, extra).cte("moved")
    audit = sa.insert(AUDIT).from_select(
        ["mailbox_id", *_AUDIT_FIELDS],
        sa.select(moved.c.id, *(_p(f"a_{name}", AUDIT.c[name]) for name in _AUDIT_FIELDS)),
    ).cte("audit")
    statement = sa.select(*(moved.c[column.name] for column in _MAILBOX_COLS)).add_cte(audit)
    if finish:
        finished = (
            sa.update(INBOX)
            .where(INBOX.c.id == _p("f_id", INBOX.c.id), sa.exists(sa.select(moved.c.id)))
            .values(
                status=_p("f_status", INBOX.c.status),
                outcome=_p("f_outcome", INBOX.c.outcome),
                error=None,
                mailbox_id=sa.select(moved.c.id).scalar_subquery(),
                processed_at=_p("v_now", INBOX.c.processed_at),
            )
            .cte("finished")
        )
        statement = statement.add_cte(finished)
    return statement


@lru_cache(maxsize=32)
def _pg_move_by_id_statement(sources: tuple[str, ...]) -> sa.Select[Any]:
    """PostgreSQL: read a mailbox, move it (when in ``sources`` and free) and audit it, in one statement.

    Returns one row when the mailbox exists: its columns before, then after (all NULL when the guard
    failed). The UPDATE re-checks version and state on the row it locks, so a concurrent change makes
    it move nothing rather than act on the stale read. (Short labels keep the SQL under psycopg's
    4 KB limit for caching a query's conversion: above it, converting costs more than the round trip.)
    """
    before = sa.select(*_MAILBOX_COLS).where(MAILBOX.c.id == _p("g_id", MAILBOX.c.id)).cte("before")
    moved = (
        sa.update(MAILBOX)
        .where(
            MAILBOX.c.id == before.c.id,
            MAILBOX.c.version == before.c.version,
            MAILBOX.c.state.in_([sa.literal(state, MAILBOX.c.state.type) for state in sources]),
            _FREE,
        )
        .values(
            state=_p("v_state", MAILBOX.c.state),
            version=MAILBOX.c.version + 1,
            state_changed_at=_p("v_now", MAILBOX.c.state_changed_at),
            updated_at=_p("v_now", MAILBOX.c.updated_at),
            **_CLEARED_ON_TRANSITION,
        )
        .returning(*_MAILBOX_COLS)
        .cte("moved")
    )
    audit_values = [_p(f"a_{name}", AUDIT.c[name]) for name in _AUDIT_FIELDS]
    audit_values[_AUDIT_FIELDS.index("from_state")] = before.c.state  # type: ignore[call-overload]
    audit = sa.insert(AUDIT).from_select(
        ["mailbox_id", *_AUDIT_FIELDS],
        sa.select(moved.c.id, *audit_values).select_from(moved.join(before, sa.true())),
    ).cte("audit")
    return (
        sa.select(*(before.c[c.name] for c in _MAILBOX_COLS),
                  *(moved.c[c.name].label(f"n{i}") for i, c in enumerate(_MAILBOX_COLS)))
        .select_from(before.outerjoin(moved, sa.true()))
        .add_cte(audit)
    )


def _finish_params(delivery_id: int, status: str, outcome: str | None, error: str | None,
                   mailbox_id: uuid.UUID | None) -> dict[str, Any]:
    return {"g_id": delivery_id, "v_status": status, "v_outcome": outcome, "v_error": error,
            "v_mailbox_id": mailbox_id, "v_now": utcnow()}


class Finish(NamedTuple):
    """A webhook delivery to mark finished in the same write as the transition it caused."""

    delivery_id: int
    status: str
    outcome: str


class Move(NamedTuple):
    """A pure-database transition chosen by `Store.transition_by_id`'s ``decide``."""

    to_state: State
    trigger: str
    source: Source
    request_id: str | None = None
    detail: dict[str, Any] | None = None


def _transition_parts(
    mailbox: Mailbox,
    to_state: State,
    trigger: str,
    source: Source,
    request_id: str | None,
    detail: dict[str, Any] | None,
    lease_owner: str | None,
    values: dict[str, Any] | None,
) -> tuple[tuple[sa.Update, tuple[str, ...]], dict[str, Any], dict[str, Any]]:
    """The prebuilt UPDATE (with its extra-column key), its parameters and the audit row."""
    now = utcnow()
    extra = dict(values or {})
    if to_state is State.WARMING and mailbox.warmed_at is None:
        extra.setdefault("warmed_at", now)
    keys = tuple(sorted(extra))
    params: dict[str, Any] = {
        "g_id": mailbox.id,
        "g_version": mailbox.version,
        "g_state": mailbox.state.value,
        "v_state": to_state.value,
        "v_now": now,
        **{f"x_{key}": value for key, value in extra.items()},
    }
    if lease_owner:
        params["g_owner"] = lease_owner
    else:
        params["g_now"] = now
    audit = {
        "mailbox_id": mailbox.id,
        "trigger": trigger,
        "from_state": mailbox.state.value,
        "to_state": to_state.value,
        "at": now,
        "source": source.value,
        "request_id": request_id,
        "detail": detail or None,
    }
    return (_transition_statement(bool(lease_owner), keys), keys), params, audit


class Store:
    """The database side of a flow. Every public method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._direct = Direct(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- plumbing --------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for one read statement, in autocommit mode: no BEGIN/COMMIT round trips."""
        with self.engine.connect() as conn:
            if self._sqlite:  # the driver is in autocommit already; the begin hook skips BEGIN
                yield conn.execution_options(mailbox_flow_read=True)
            else:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def _single(self) -> Iterator[Connection]:
        """A connection for ONE write statement: atomic on its own, so no BEGIN/COMMIT round trips."""
        with self._read() as conn:
            yield conn

    @contextmanager
    def _runner(self, *, transaction: bool = False) -> Iterator[Runner]:
        """Where the prebuilt statements run: the direct path, or SQLAlchemy's when it is observed.

        Without ``transaction``, each statement commits on its own (autocommit: no BEGIN/COMMIT round
        trips); with it, all of them commit together (``BEGIN IMMEDIATE`` on SQLite).
        """
        if self._direct.usable:
            with self._direct.runner(transaction=transaction) as runner:
                yield runner
        elif transaction:
            with self._write() as conn:
                yield EngineRunner(conn)
        else:
            with self._single() as conn:
                yield EngineRunner(conn)

    @_storage_errors
    def create_schema(self) -> None:
        metadata.create_all(self.engine, tables=[MAILBOX, AUDIT, INBOX])

    @_storage_errors
    def ping(self) -> bool:
        with self._read() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar() == 1

    @_storage_errors
    def probe_write(self) -> None:
        """Raise `StorageError` unless the inbox takes writes: a no-op ``UPDATE`` (no row matches) in a
        transaction rolled back at once. It fails on a read-only database file or transaction (a
        standby, ``default_transaction_read_only``), a missing privilege or missing tables; writes
        nothing, so it cannot see a full disk (the receiver counts failed deliveries for that)."""
        with self.engine.connect() as conn, conn.begin() as transaction:
            conn.execute(sa.update(INBOX).where(sa.false()).values(status=INBOX.c.status))
            transaction.rollback()

    def dispose(self) -> None:
        self.engine.dispose()

    # -- mailboxes -------------------------------------------------------------------------------

    @_storage_errors
    def insert_mailbox(self, values: dict[str, Any], audit: dict[str, Any] | None = None) -> Mailbox:
        """Insert a mailbox (and optionally its first audit row) or raise `DuplicateMailbox`."""
        now = utcnow()
        row = {
            "id": uuid.uuid4(),
            "version": 1,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "state_changed_at": now,
            **values,
        }
        try:
            with self._runner(transaction=True) as run:
                result = run.first(_MAILBOX_INSERT, row, columns=_MAILBOX_COLS, column_keys=sorted(row))
                if audit is not None:
                    first_entry = {"mailbox_id": row["id"], "at": now, **audit}
                    run.run(_AUDIT_INSERT, first_entry, column_keys=sorted(first_entry))
        except IntegrityError as exc:
            existing = self.find_active_by_email(row["email"])
            if existing is None and row.get("campaign_id") is not None:
                existing = self.get_by_campaign(row["campaign_id"])
            raise DuplicateMailbox(row["email"], existing.id if existing else None) from exc
        assert result is not None  # INSERT ... RETURNING returns its row
        return _mailbox_of(result)

    def _one_mailbox(self, statement: Statement, params: dict[str, Any]) -> Mailbox | None:
        """The first row of one prebuilt statement (in autocommit) as a `Mailbox`."""
        with self._runner() as run:
            values = run.first(statement, params, columns=_MAILBOX_COLS)
        return _mailbox_of(values) if values is not None else None

    @_storage_errors
    def get(self, mailbox_id: uuid.UUID) -> Mailbox | None:
        return self._one_mailbox(_GET, {"g_id": mailbox_id})

    @_storage_errors
    def get_by_campaign(self, campaign_id: int) -> Mailbox | None:
        if not is_id(campaign_id):  # no campaign can have it
            return None
        return self._one_mailbox(_GET_BY_CAMPAIGN, {"g_campaign": campaign_id})

    @_storage_errors
    def match(self, campaign_id: int, email: str | None) -> tuple[Mailbox | None, Mailbox | None]:
        """``(get_by_campaign(campaign_id), find_active_by_email(email))`` in one read."""
        with self._runner() as run:
            rows = run.all(_MATCH, {"g_campaign": campaign_id, "g_email": email},
                           columns=_MAILBOX_COLS)
        found = [_mailbox_of(values) for values in rows]
        linked = next((m for m in found if m.campaign_id == campaign_id), None)
        active = next((m for m in found if email is not None and m.email == email
                       and m.state in ACTIVE_STATES), None)
        return linked, active

    @_storage_errors
    def find_active_by_email(self, email: str) -> Mailbox | None:
        return self._one_mailbox(_FIND_ACTIVE, {"g_email": email})

    @_storage_errors
    def find_latest_by_email(self, email: str) -> Mailbox | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(*_MAILBOX_COLS)
                .where(MAILBOX.c.email == email)
                .order_by(MAILBOX.c.created_at.desc())
                .limit(1)
            ).first()
        return _mailbox_of(list(row)) if row else None

    @_storage_errors
    def mailboxes(
        self,
        *,
        states: Sequence[State] | None = None,
        owner_id: str | None = None,
        changed_before: datetime | None = None,
        limit: int | None = None,
    ) -> list[Mailbox]:
        if not states or len(states) == 1:  # a prebuilt statement (an IN list could not be one)
            statement = _list_statement(bool(states), owner_id is not None, changed_before is not None,
                                        limit is not None)
            params = {"g_state": State(states[0]).value if states else None, "g_owner": owner_id,
                      "g_before": changed_before, "g_limit": limit}
            return self._mailboxes_of(statement, params)
        query = sa.select(*_MAILBOX_COLS)
        if states:
            query = query.where(MAILBOX.c.state.in_([State(s).value for s in states]))
        if owner_id is not None:
            query = query.where(MAILBOX.c.owner_id == owner_id)
        if changed_before is not None:
            query = query.where(MAILBOX.c.state_changed_at < changed_before)
        query = query.order_by(MAILBOX.c.created_at, MAILBOX.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [_mailbox_of(list(r)) for r in conn.execute(query)]

    @_storage_errors
    def history(self, mailbox_id: uuid.UUID) -> list[AuditEntry]:
        with self._runner() as run:
            rows = run.all(_HISTORY, {"g_id": mailbox_id}, columns=_AUDIT_COLS)
        return [_to_audit(dict(zip(_AUDIT_NAMES, row, strict=True))) for row in rows]

    @_storage_errors
    def claim(
        self,
        mailbox: Mailbox,
        *,
        owner: str,
        until: datetime,
        trigger: str,
        request_id: str,
    ) -> Mailbox | None:
        """Take the short lease on ``mailbox`` and record the intent; None if someone else moved first."""
        now = utcnow()
        params = {
            "g_id": mailbox.id,
            "g_version": mailbox.version,
            "g_state": mailbox.state.value,
            "g_now": now,
            "v_owner": owner,
            "v_until": until,
            "v_trigger": trigger,
            "v_request_id": request_id,
            "v_now": now,
        }
        return self._one_mailbox(_CLAIM, params)

    @_storage_errors
    def transition(
        self,
        mailbox: Mailbox,
        *,
        to_state: State,
        trigger: str,
        source: Source,
        request_id: str | None,
        detail: dict[str, Any] | None = None,
        lease_owner: str | None = None,
        values: dict[str, Any] | None = None,
        finish: Finish | None = None,
    ) -> Mailbox | None:
        """Move ``mailbox`` to ``to_state`` and write its audit row, in one transaction.

        Guarded by version and state, and by the lease: the holder's ``lease_owner`` when the caller
        claimed the row, otherwise "nobody holds an unexpired lease". None when the guard fails.
        ``finish``: also mark that delivery finished (linked to the mailbox), in the same transaction.
        """
        statement, params, audit = _transition_parts(
            mailbox, to_state, trigger, source, request_id, detail, lease_owner, values
        )
        with self._runner(transaction=self._sqlite) as run:
            return self._transition_with(run, bool(lease_owner), statement, params, audit, finish)

    @_storage_errors
    def transition_by_id(
        self,
        mailbox_id: uuid.UUID,
        decide: Callable[[Mailbox], Move],
        expected: tuple[frozenset[State], Move] | None = None,
    ) -> tuple[Mailbox, Mailbox | None] | None:
        """Read a mailbox, let ``decide`` pick its move (or raise), and make it: a pure-database transition.

        None when there is no such mailbox; ``(before, None)`` when the guard failed (someone holds or
        changed it). On SQLite the read, the UPDATE and the audit INSERT share one write transaction.
        On PostgreSQL, ``expected`` (the states ``decide`` moves from, and the move it picks from each
        of them) lets the read, the guarded UPDATE and the audit INSERT run as one statement; ``decide``
        then runs on the row as it was read, and must agree with what was written. Without it, the
        read and the (single-statement) write are two autocommit round trips.
        """
        if expected is not None and not self._sqlite:
            return self._pg_move_by_id(mailbox_id, decide, *expected)
        with self._runner(transaction=self._sqlite) as run:
            values = run.first(_GET, {"g_id": mailbox_id}, columns=_MAILBOX_COLS)
            if values is None:
                return None
            current = _mailbox_of(values)
            move = decide(current)
            statement, params, audit = _transition_parts(
                current, move.to_state, move.trigger, move.source, move.request_id, move.detail,
                None, None,
            )
            return current, self._transition_with(run, False, statement, params, audit)

    def _pg_move_by_id(
        self, mailbox_id: uuid.UUID, decide: Callable[[Mailbox], Move], sources: frozenset[State],
        move: Move,
    ) -> tuple[Mailbox, Mailbox | None] | None:
        """`transition_by_id` on PostgreSQL in one round trip (see `_pg_move_by_id_statement`)."""
        statement = _pg_move_by_id_statement(tuple(sorted(s.value for s in sources)))
        now = utcnow()
        params: dict[str, Any] = {
            "g_id": mailbox_id, "g_now": now, "v_state": move.to_state.value, "v_now": now,
            "a_trigger": move.trigger, "a_to_state": move.to_state.value, "a_at": now,
            "a_source": move.source.value, "a_request_id": move.request_id,
            "a_detail": move.detail or None,
        }
        with self._runner() as run:
            values = run.first(statement, params, columns=[*_MAILBOX_COLS, *_MAILBOX_COLS])
        if values is None:
            return None
        width = len(_MAILBOX_COLS)
        before = _mailbox_of(values[:width])
        after = _mailbox_of(values[width:]) if values[width] is not None else None
        decided = decide(before)  # raises for a state the move is not allowed from
        if after is not None and decided != move:
            raise RuntimeError(f"the machine moved {before.id} with {decided}, not {move}")
        return before, after

    def _transition_with(
        self,
        run: Runner,
        by_owner: bool,
        statement: tuple[sa.Update, tuple[str, ...]],
        params: dict[str, Any],
        audit: dict[str, Any],
        finish: Finish | None = None,
    ) -> Mailbox | None:
        """The guarded UPDATE and its audit INSERT (and the delivery's finish).

        PostgreSQL: one data-modifying statement (autocommit). SQLite: two (three) statements inside
        the caller's write transaction.
        """
        if not self._sqlite:
            params.update({f"a_{name}": audit[name] for name in _AUDIT_FIELDS})
            if finish is not None:
                params.update(f_id=finish.delivery_id, f_status=finish.status,
                              f_outcome=finish.outcome)
            combined = _pg_transition_statement(by_owner, statement[1], finish is not None)
            values = run.first(combined, params, columns=_MAILBOX_COLS)
            return _mailbox_of(values) if values is not None else None
        values = run.first(statement[0], params, columns=_MAILBOX_COLS)
        if values is None:
            return None
        run.run(_AUDIT_INSERT, audit, column_keys=_AUDIT_KEYS)
        mailbox = _mailbox_of(values)
        if finish is not None:
            run.run(_FINISH_DELIVERY, _finish_params(finish.delivery_id, finish.status,
                                                     finish.outcome, None, mailbox.id))
        return mailbox

    @_storage_errors
    def release(
        self,
        mailbox: Mailbox,
        *,
        lease_owner: str | None,
        error: str | None,
        next_attempt_at: datetime | None,
        keep_intent: bool = False,
        count_attempt: bool = True,
        hold_until: datetime | None = None,
    ) -> Mailbox | None:
        """Give the lease back without moving the state, recording the error and attempt count.

        ``hold_until`` keeps the lease (and its owner) until then instead: after a call whose request
        may still be running at Mailivery (a timeout), nobody else may act on the mailbox meanwhile.
        """
        now = utcnow()
        values: dict[str, Any] = {
            "version": MAILBOX.c.version + 1,
            "lease_owner": None if hold_until is None else lease_owner,
            "lease_until": hold_until,
            "last_error": error,
            "next_attempt_at": next_attempt_at,
            "updated_at": now,
        }
        if count_attempt:
            values["attempts"] = MAILBOX.c.attempts + 1
        if not keep_intent:
            values.update(intent_trigger=None, intent_request_id=None, intent_at=None)
        guard = [MAILBOX.c.id == mailbox.id]
        if lease_owner:
            guard.append(MAILBOX.c.lease_owner == lease_owner)
        else:
            guard += [MAILBOX.c.version == mailbox.version, _not_leased(now)]
        with self._single() as conn:
            row = conn.execute(
                sa.update(MAILBOX).where(*guard).values(values).returning(*_MAILBOX_COLS)
            ).first()
        return _mailbox_of(list(row)) if row else None

    @_storage_errors
    def flag(self, mailbox_id: uuid.UUID, reason: str | None) -> None:
        """Set (or clear, with None) the reconciler's flag on a mailbox; does not change its version."""
        with self._write() as conn:
            conn.execute(
                sa.update(MAILBOX)
                .where(MAILBOX.c.id == mailbox_id)
                .values(flag_reason=reason, flagged_at=utcnow() if reason else None)
            )

    # -- inbox -----------------------------------------------------------------------------------

    @_storage_errors
    def insert_delivery(self, values: dict[str, Any]) -> Delivery | None:
        """Store a delivery; None when its ``dedupe_key`` is already in the inbox."""
        row = {"received_at": utcnow(), "attempts": 0, **values}
        full = dict.fromkeys(_INBOX_KEYS)
        full.update(row)
        statement = _INBOX_INSERT_NEW.get(self.dialect, _INBOX_INSERT)
        try:
            return self._one_delivery(statement, full, _INBOX_KEYS)
        except IntegrityError:
            if row.get("dedupe_key") is None:
                raise
            return None

    @_storage_errors
    def get_delivery(self, delivery_id: int) -> Delivery | None:
        """The delivery with this id; None for an id no row can have (see `mailbox_flow._bounds`)."""
        if not is_id(delivery_id):
            return None
        return self._one_delivery(_GET_DELIVERY, {"g_id": delivery_id})

    @_storage_errors
    def get_delivery_by_key(self, dedupe_key: str) -> Delivery | None:
        return self._one_delivery(_GET_DELIVERY_BY_KEY, {"g_key": dedupe_key})

    @_storage_errors
    def original_and_mailbox(
        self, dedupe_key: str, campaign_id: int
    ) -> tuple[Delivery | None, Mailbox | None]:
        """The delivery stored under ``dedupe_key`` and the mailbox linked to ``campaign_id``, in one
        read; ``(None, None)`` when no delivery has that key (yet: see `MailboxFlow.handle_webhook`).
        """
        with self._runner() as run:
            values = run.first(_ORIGINAL_AND_MAILBOX, {"g_key": dedupe_key, "g_campaign": campaign_id},
                               columns=[*_INBOX_COLS, *_MAILBOX_COLS])
        if values is None:
            return None, None
        width = len(_INBOX_COLS)
        mailbox = _mailbox_of(values[width:]) if values[width] is not None else None
        return _delivery_of(values[:width]), mailbox

    def _one_delivery(self, statement: Statement, params: dict[str, Any],
                      column_keys: Sequence[str] | None = None) -> Delivery | None:
        """The first row of one prebuilt statement (in autocommit) as a `Delivery`."""
        with self._runner() as run:
            values = run.first(statement, params, columns=_INBOX_COLS, column_keys=column_keys)
        return _delivery_of(values) if values is not None else None

    @_storage_errors
    def list_deliveries(
        self,
        *,
        statuses: Sequence[str] | None = None,
        received_before: datetime | None = None,
        limit: int | None = None,
    ) -> list[Delivery]:
        query = sa.select(*_INBOX_COLS)
        if statuses:
            query = query.where(INBOX.c.status.in_(list(statuses)))
        if received_before is not None:
            query = query.where(INBOX.c.received_at < received_before)
        query = query.order_by(INBOX.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [_delivery_of(list(r)) for r in conn.execute(query)]

    @_storage_errors
    def touch_delivery(self, delivery_id: int) -> None:
        """Count one more processing attempt of a delivery."""
        self._single_statement(_TOUCH_DELIVERY, {"g_id": delivery_id})

    @_storage_errors
    def finish_delivery(
        self,
        delivery_id: int,
        *,
        status: str,
        outcome: str | None,
        error: str | None = None,
        mailbox_id: uuid.UUID | None = None,
    ) -> None:
        self._single_statement(_FINISH_DELIVERY,
                               _finish_params(delivery_id, status, outcome, error, mailbox_id))

    def _single_statement(self, statement: sa.Update, params: dict[str, Any]) -> None:
        """One prebuilt write that returns nothing, in autocommit."""
        with self._runner() as run:
            run.run(statement, params)

    @_storage_errors
    def count(self, table: str) -> int:
        """Rows in one of the three tables (for tests and reports)."""
        tables = {"mailbox": MAILBOX, "mailbox_transition": AUDIT, "webhook_delivery": INBOX}
        with self._read() as conn:
            return cast(int, conn.execute(sa.select(sa.func.count()).select_from(tables[table])).scalar())

    # -- streaming scans for the reconciler (keyset pagination: one short read per batch) ----------

    def scan_state(
        self, state: State, *, changed_before: datetime, batch_size: int = 500
    ) -> Iterator[Mailbox]:
        """Mailboxes in ``state`` since before ``changed_before``, oldest first, streamed in batches.

        Each batch is one short read served by the ``(state, state_changed_at, id)`` index, in its order
        (no sort), and resumes after the last row of the previous one (keyset pagination), so memory
        stays bounded by ``batch_size``, no transaction stays open between batches, and rows that leave
        the state meanwhile are fine.
        """
        params: dict[str, Any] = {"g_state": State(state).value, "g_before": changed_before,
                                  "g_limit": batch_size}
        statement = _SCAN_STATE_FIRST
        while True:
            batch = self._mailboxes_of(statement, params)
            yield from batch
            if len(batch) < batch_size:
                return
            statement = _SCAN_STATE_NEXT
            params["g_after_at"], params["g_after_id"] = batch[-1].state_changed_at, batch[-1].id

    def scan_stale_intents(self, *, now: datetime, batch_size: int = 500,
                           intent_before: datetime | None = None) -> Iterator[Mailbox]:
        """Mailboxes that carry an intent nobody holds (lease expired or released), by id, in batches;
        with ``intent_before``, only intents recorded before then."""
        after: uuid.UUID | None = None
        while True:
            query = sa.select(*_MAILBOX_COLS).where(
                MAILBOX.c.intent_trigger.is_not(None), _not_leased(now)
            )
            if intent_before is not None:
                query = query.where(sa.or_(MAILBOX.c.intent_at.is_(None),
                                           MAILBOX.c.intent_at <= intent_before))
            if after is not None:
                query = query.where(MAILBOX.c.id > after)
            batch = self._batch(query.order_by(MAILBOX.c.id).limit(batch_size))
            yield from batch
            if len(batch) < batch_size:
                return
            after = batch[-1].id

    def scan_linked(self, *, batch_size: int = 500) -> Iterator[Mailbox]:
        """Mailboxes linked to a Mailivery campaign, by campaign id (its unique index), in batches."""
        after = 0
        while True:
            query = (
                sa.select(*_MAILBOX_COLS)
                .where(MAILBOX.c.campaign_id.is_not(None), MAILBOX.c.campaign_id > after)
                .order_by(MAILBOX.c.campaign_id)
                .limit(batch_size)
            )
            batch = self._batch(query)
            yield from batch
            if len(batch) < batch_size:
                return
            after = cast(int, batch[-1].campaign_id)

    def scan_deliveries(
        self, status: str, *, received_before: datetime | None = None, batch_size: int = 500
    ) -> Iterator[Delivery]:
        """Deliveries of one status, oldest first, in batches over the (status, received_at) index."""
        after: tuple[datetime, int] | None = None
        while True:
            query = sa.select(*_INBOX_COLS).where(INBOX.c.status == status)
            if received_before is not None:
                query = query.where(INBOX.c.received_at < received_before)
            if after is not None:
                query = query.where(
                    INBOX.c.received_at >= after[0],
                    sa.or_(INBOX.c.received_at > after[0], INBOX.c.id > after[1]),
                )
            query = query.order_by(INBOX.c.received_at, INBOX.c.id).limit(batch_size)
            batch = self._delivery_batch(query)
            yield from batch
            if len(batch) < batch_size:
                return
            after = (batch[-1].received_at, batch[-1].id)

    @_storage_errors
    def claim_delivery(self, delivery: Delivery) -> bool:
        """Take a stored delivery for reprocessing (compare-and-set on its attempt count).

        True when this caller won it: it was still ``received``/``failed`` with the attempt count read
        before (the claim counts as one attempt). Two reconcilers racing for a delivery: one gets True.
        """
        with self._runner() as run:
            won = run.first(_CLAIM_DELIVERY, {"g_id": delivery.id, "g_attempts": delivery.attempts},
                            columns=[INBOX.c.id])
        return won is not None

    @_storage_errors
    def _mailboxes_of(self, statement: sa.Select[Any], params: dict[str, Any]) -> list[Mailbox]:
        """Every row of one prebuilt read as `Mailbox` snapshots."""
        with self._runner() as run:
            return [_mailbox_of(values) for values in run.all(statement, params, columns=_MAILBOX_COLS)]

    @_storage_errors
    def _batch(self, query: sa.Select[Any]) -> list[Mailbox]:
        with self._read() as conn:
            return [_mailbox_of(list(r)) for r in conn.execute(query)]

    @_storage_errors
    def _delivery_batch(self, query: sa.Select[Any]) -> list[Delivery]:
        with self._read() as conn:
            return [_delivery_of(list(r)) for r in conn.execute(query)]

    @_storage_errors
    def flag_many(self, mailbox_ids: Sequence[uuid.UUID], reason: str) -> None:
        """`flag` for many mailboxes in one transaction (the reconciler's dry runs flag thousands)."""
        if not mailbox_ids:
            return
        with self._write() as conn:
            conn.execute(
                sa.update(MAILBOX)
                .where(MAILBOX.c.id.in_(list(mailbox_ids)))
                .values(flag_reason=reason, flagged_at=utcnow())
            )
