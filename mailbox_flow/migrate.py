"""Schema migrations (Alembic, shipped in ``mailbox_flow/migrations``) as plain functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .errors import ConfigurationError
from .models import metadata
from .store import database_url_of, make_engine

__all__ = [
    "VERSION_TABLE",
    "alembic_config",
    "current_revision",
    "head_revision",
    "schema_differences",
    "upgrade",
]

VERSION_TABLE = "mailbox_flow_alembic_version"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    url = database_url_of(database_url).render_as_string(hide_password=False)  # postgres:// too
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> str | None:
    """Apply the migrations up to ``revision``; returns the revision the database is at.

    A database whose tables were made by ``MailboxFlow.create_schema()`` (no version recorded) is
    stamped at head when its schema equals the models, and refused with `ConfigurationError` otherwise.
    """
    config = alembic_config(database_url)
    if current_revision(database_url) is None and _has_our_tables(database_url):
        differences = schema_differences(database_url)
        if differences:
            raise ConfigurationError(
                f"the database has mailbox_flow tables but no migration version, and they differ from "
                f"this version's models ({len(differences)} differences); migrate it by hand"
            )
        command.stamp(config, "head")
        return current_revision(database_url)
    command.upgrade(config, revision)
    return current_revision(database_url)


def _has_our_tables(database_url: str) -> bool:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return set(metadata.tables) <= set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def schema_differences(database_url: str) -> list[Any]:
    """What Alembic's autogenerate sees between the database and the models (empty when equal)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def current_revision(database_url: str) -> str | None:
    """The revision the database is at (None for a database never migrated)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision shipped with this version of mailbox_flow."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
