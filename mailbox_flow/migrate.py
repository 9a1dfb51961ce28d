"""Schema migrations (Alembic, shipped in ``mailbox_flow/migrations``) as plain functions."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .store import make_engine

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "head_revision", "upgrade"]

VERSION_TABLE = "mailbox_flow_alembic_version"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and ``database_url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> str | None:
    """Apply the migrations up to ``revision``; returns the revision the database is at."""
    command.upgrade(alembic_config(database_url), revision)
    return current_revision(database_url)


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
