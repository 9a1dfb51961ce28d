"""The hot path's statements, compiled once per dialect and run on the DBAPI cursor.

SQLAlchemy's execution path (events, parameter construction, result set-up) costs several times the
database work of a short statement on SQLite and a large share of it on PostgreSQL. The store's hot
statements are fixed Core constructs, so they are compiled here once per dialect, with SQLAlchemy's
own bind and result processors for their column types (so values are stored and read exactly as the
SQLAlchemy path stores and reads them), and executed directly on a pooled DBAPI connection.

What this skips is only the per-execution machinery. It is not used (the store falls back to
SQLAlchemy's execution) when the engine echoes SQL or anything listens to its cursor-execution events
(tracing, query logging), so instrumentation keeps seeing every statement. DBAPI errors are wrapped in
SQLAlchemy's exception classes, as SQLAlchemy would wrap them, so callers handle one family of errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

__all__ = ["Direct", "DirectRunner", "EngineRunner", "Prepared", "Runner", "Statement"]

Processor = Callable[[Any], Any] | None
#: What the runners execute: prebuilt Core statements (module constants, compiled once).
Statement = sa.Select[Any] | sa.Update | sa.Insert


class Prepared:
    """One statement compiled for one dialect: its SQL, how to build its parameters, how to read rows."""

    __slots__ = ("_binds", "_names", "_positional", "_results", "_width", "sql")

    def __init__(
        self,
        statement: Statement,
        dialect: sa.Dialect,
        *,
        column_keys: Sequence[str] | None = None,
        columns: Sequence[sa.ColumnElement[Any]] = (),
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys or ()) or None)
        if any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("a directly executed statement cannot have IN-list parameters to expand")
        self.sql = compiled.string
        self._positional = bool(compiled.positional)
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        names = list(compiled.positiontup or ()) if self._positional else list(by_name)
        self._names = tuple(names)
        binds: list[tuple[str, Any, Processor]] = []
        for name in names:
            bind = by_name[name]
            default = _REQUIRED if bind.required else bind.value
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            binds.append((bind.key, default, processor))
        self._binds = tuple(binds)
        processors = [column.type.dialect_impl(dialect).result_processor(dialect, None)
                      for column in columns]
        self._width = len(processors)
        self._results = tuple((i, p) for i, p in enumerate(processors) if p is not None)

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The DBAPI parameters for ``values`` (keyed like the statement's bind parameters)."""
        out = []
        for key, default, processor in self._binds:
            value = values.get(key, default)
            if value is _REQUIRED:
                raise KeyError(f"no value for bind parameter {key!r}")
            out.append(processor(value) if processor is not None else value)
        if self._positional:
            return tuple(out)
        return dict(zip(self._names, out, strict=True))

    def row(self, raw: Sequence[Any]) -> list[Any]:
        """A fetched row, each value passed through its column type's result processor."""
        values = list(raw)
        if len(values) != self._width:
            raise ValueError(f"expected {self._width} columns, got {len(values)}")
        for index, processor in self._results:
            values[index] = processor(values[index])
        return values


_REQUIRED = object()


def _dialect_key(dialect: sa.Dialect) -> tuple[Any, ...]:
    """What a compiled statement and its type processors depend on, beyond the statement itself.

    Two engines whose dialects agree on these (the same database kind, driver and server version, as
    every flow of a process on one database has) share their prepared statements, so a new engine
    (a test's fresh database, a second flow) does not compile them all again.
    """
    return (type(dialect), dialect.server_version_info, dialect.paramstyle,
            dialect.supports_native_uuid, dialect.supports_native_boolean,
            dialect.supports_native_decimal, dialect.max_identifier_length,
            getattr(dialect, "_json_serializer", None), getattr(dialect, "_json_deserializer", None))


#: Prepared statements shared by every engine of the process (see `_dialect_key`); bounded, although
#: statements are module constants or come from bounded caches.
_SHARED: dict[tuple[Any, ...], tuple[Any, Prepared]] = {}
_SHARED_MAX = 4096


class Direct:
    """Prepared statements of one engine, and the pooled DBAPI connections they run on."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._sqlite = engine.dialect.name == "sqlite"
        self._prepared: dict[tuple[int, tuple[str, ...] | None], tuple[Any, Prepared]] = {}
        dbapi = engine.dialect.loaded_dbapi
        self._error: type[Exception] = dbapi.Error

    @property
    def usable(self) -> bool:
        """False when SQL is logged (``echo``, or the ``sqlalchemy.engine`` logger at INFO) or someone
        listens to cursor executions: then SQLAlchemy runs every statement, so they all see it."""
        engine = self.engine
        dispatch = engine.dispatch
        return not (engine.echo or dispatch.before_cursor_execute or dispatch.after_cursor_execute
                    or engine.logger.isEnabledFor(logging.INFO))

    def prepared(
        self,
        statement: Statement,
        *,
        column_keys: Sequence[str] | None = None,
        columns: Sequence[sa.ColumnElement[Any]] = (),
    ) -> Prepared:
        """``statement`` compiled for this engine (once: statements are long-lived module constants)."""
        key = (id(statement), tuple(column_keys) if column_keys is not None else None)
        entry = self._prepared.get(key)
        if entry is None or entry[0] is not statement:
            shared_key = (*key, _dialect_key(self.dialect))
            entry = _SHARED.get(shared_key)
            if entry is None or entry[0] is not statement:
                entry = (statement, Prepared(statement, self.dialect, column_keys=column_keys,
                                             columns=columns))
                if len(_SHARED) >= _SHARED_MAX:
                    _SHARED.clear()
                _SHARED[shared_key] = entry
            self._prepared[key] = entry
        return entry[1]

    @contextmanager
    def connection(self, *, transaction: bool = False) -> Iterator[Any]:
        """A pooled DBAPI connection in autocommit mode, or inside one write transaction.

        SQLite: ``BEGIN IMMEDIATE`` … ``COMMIT`` (the driver itself never opens transactions here).
        PostgreSQL: autocommit for single statements; a transaction otherwise. DBAPI errors come out
        as SQLAlchemy's exceptions; a connection the error broke is invalidated, not reused.
        """
        try:
            pooled = self.engine.raw_connection()  # unlike Engine.connect(), this does not wrap errors
        except self._error as exc:
            raise DBAPIError.instance(
                None, None, exc, self._error, connection_invalidated=True, dialect=self.dialect
            ) from exc
        conn: Any = pooled.driver_connection
        autocommit_set = False
        try:
            if self._sqlite:
                if transaction:
                    conn.execute("BEGIN IMMEDIATE")
            elif not transaction:
                conn.autocommit = True
                autocommit_set = True
            try:
                yield conn
            except BaseException:
                if transaction:
                    conn.rollback()
                raise
            if transaction:
                conn.commit()
        except self._error as exc:
            invalidated = self.dialect.is_disconnect(exc, pooled.dbapi_connection, None)  # type: ignore[arg-type]
            if invalidated:
                pooled.invalidate(exc)
            raise DBAPIError.instance(
                None, None, exc, self._error, connection_invalidated=invalidated, dialect=self.dialect
            ) from exc
        finally:
            if autocommit_set and pooled.dbapi_connection is not None:
                try:
                    conn.autocommit = False
                except self._error:
                    pooled.invalidate()
            pooled.close()

    @contextmanager
    def runner(self, *, transaction: bool = False) -> Iterator[DirectRunner]:
        """A `DirectRunner` on a pooled connection (see `connection`)."""
        with self.connection(transaction=transaction) as conn:
            yield DirectRunner(self, conn)


class Runner(Protocol):
    """Runs prebuilt statements on one connection; rows come back as value lists in column order."""

    def first(self, statement: Statement, params: Mapping[str, Any], *,
              columns: Sequence[sa.ColumnElement[Any]] = (),
              column_keys: Sequence[str] | None = None) -> list[Any] | None:
        """The first row (None when there is none)."""

    def all(self, statement: Statement, params: Mapping[str, Any], *,
            columns: Sequence[sa.ColumnElement[Any]] = ()) -> list[list[Any]]:
        """Every row."""

    def run(self, statement: Statement, params: Mapping[str, Any], *,
            column_keys: Sequence[str] | None = None) -> None:
        """A statement whose rows, if any, are not needed."""


class DirectRunner:
    """`Runner` on a DBAPI connection: statements prepared by `Direct`, rows through their processors."""

    def __init__(self, direct: Direct, conn: Any) -> None:
        self._direct = direct
        self._conn = conn

    def _execute(self, statement: Statement, params: Mapping[str, Any],
                 columns: Sequence[sa.ColumnElement[Any]], column_keys: Sequence[str] | None,
                 fetch: Callable[[Any], Any]) -> tuple[Prepared, Any]:
        prepared = self._direct.prepared(statement, column_keys=column_keys, columns=columns)
        cursor = self._conn.cursor()
        try:
            cursor.execute(prepared.sql, prepared.parameters(params))
            return prepared, fetch(cursor)
        finally:
            cursor.close()

    def first(self, statement: Statement, params: Mapping[str, Any], *,
              columns: Sequence[sa.ColumnElement[Any]] = (),
              column_keys: Sequence[str] | None = None) -> list[Any] | None:
        prepared, raw = self._execute(statement, params, columns, column_keys,
                                      lambda cursor: cursor.fetchone())
        return prepared.row(raw) if raw is not None else None

    def all(self, statement: Statement, params: Mapping[str, Any], *,
            columns: Sequence[sa.ColumnElement[Any]] = ()) -> list[list[Any]]:
        prepared, raw = self._execute(statement, params, columns, None,
                                      lambda cursor: cursor.fetchall())
        return [prepared.row(values) for values in raw]

    def run(self, statement: Statement, params: Mapping[str, Any], *,
            column_keys: Sequence[str] | None = None) -> None:
        self._execute(statement, params, (), column_keys, lambda _cursor: None)


class EngineRunner:
    """`Runner` through SQLAlchemy's execution (when something observes it, or SQL is echoed)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def first(self, statement: Statement, params: Mapping[str, Any], *,
              columns: Sequence[sa.ColumnElement[Any]] = (),
              column_keys: Sequence[str] | None = None) -> list[Any] | None:
        row = self._conn.execute(statement, params).first()
        return list(row) if row is not None else None

    def all(self, statement: Statement, params: Mapping[str, Any], *,
            columns: Sequence[sa.ColumnElement[Any]] = ()) -> list[list[Any]]:
        return [list(row) for row in self._conn.execute(statement, params)]

    def run(self, statement: Statement, params: Mapping[str, Any], *,
            column_keys: Sequence[str] | None = None) -> None:
        self._conn.execute(statement, params)
