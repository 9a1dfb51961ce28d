"""Alembic migrations: the migrated schema equals the models, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from mailbox_flow import ConfigurationError, MailboxFlow, State
from mailbox_flow.migrate import (
    VERSION_TABLE,
    current_revision,
    head_revision,
    schema_differences,
    upgrade,
)
from mailbox_flow.models import metadata
from mailbox_flow.store import make_engine


def diff(database_url: str) -> list[Any]:
    return schema_differences(database_url)


def test_upgrade_reaches_head_and_matches_models(database_url: str) -> None:
    """After `upgrade`, the database is at head and autogenerate finds no difference."""
    assert current_revision(database_url) is None
    assert upgrade(database_url) == head_revision()
    assert diff(database_url) == []


def test_upgrade_is_idempotent(database_url: str) -> None:
    """Upgrading twice changes nothing the second time."""
    upgrade(database_url)
    assert upgrade(database_url) == head_revision()
    assert diff(database_url) == []


def test_create_schema_matches_the_migrations(database_url: str) -> None:
    """create_schema() (quick start) builds the same tables the migrations build."""
    with MailboxFlow(database_url, webhook_secret="s" * 32) as flow:
        flow.create_schema()
    assert diff(database_url) == []


def test_upgrade_stamps_a_create_schema_database(database_url: str) -> None:
    """A database made by create_schema() is stamped at head by upgrade, not created twice."""
    with MailboxFlow(database_url, webhook_secret="s" * 32) as flow:
        flow.create_schema()
        flow.store.insert_mailbox({"email": "kept@b.co", "state": State.PENDING.value})
    assert current_revision(database_url) is None
    assert upgrade(database_url) == head_revision()
    with MailboxFlow(database_url, webhook_secret="s" * 32) as flow:
        assert flow.find_by_email("kept@b.co") is not None


def test_upgrade_refuses_a_drifted_unversioned_schema(database_url: str) -> None:
    """Unversioned tables that differ from the models are refused with ConfigurationError."""
    with MailboxFlow(database_url, webhook_secret="s" * 32) as flow:
        flow.create_schema()
        with flow.store.engine.begin() as conn:
            conn.execute(sa.text("DROP INDEX ix_mailbox_state_scan"))
    with pytest.raises(ConfigurationError, match="differ"):
        upgrade(database_url)


def test_migrated_database_works(database_url: str) -> None:
    """A migrated database takes a mailbox and enforces one live mailbox per email."""
    upgrade(database_url)
    with MailboxFlow(database_url, webhook_secret="s" * 32) as flow:
        flow.store.insert_mailbox({"email": "a@b.co", "state": State.PENDING.value})
        engine = flow.store.engine
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
    assert {"mailbox", "mailbox_transition", "webhook_delivery", VERSION_TABLE} <= tables


def test_metadata_fits_a_partner_environment(tmp_path: Any) -> None:
    """A partner's Alembic target metadata can include our tables beside theirs, with no diff."""
    partner = sa.MetaData()
    sa.Table("partner_user", partner, sa.Column("id", sa.Integer, primary_key=True))
    for table in metadata.tables.values():
        table.to_metadata(partner)
    url = f"sqlite:///{tmp_path}/partner.db"
    engine = make_engine(url)
    partner.create_all(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert list(compare_metadata(context, partner)) == []
    engine.dispose()
    assert set(metadata.tables) == {"mailbox", "mailbox_transition", "webhook_delivery"}


def _mailbox_indexes(database_url: str) -> dict[str, list[str | None]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return {ix["name"]: ix["column_names"] for ix in sa.inspect(conn).get_indexes("mailbox")
                    if ix["name"]}
    finally:
        engine.dispose()


@pytest.mark.parametrize("prebuilt", [False, True], ids=["plain", "index-built-beforehand"])
def test_upgrade_from_0001_replaces_the_scan_index(database_url: str, prebuilt: bool) -> None:
    """0001 -> head keeps the rows and swaps (state, state_changed_at) for (state, state_changed_at, id),
    also when the new index was built beforehand (as CREATE INDEX CONCURRENTLY would on a big table)."""
    assert upgrade(database_url, "0001") == "0001"
    assert _mailbox_indexes(database_url)["ix_mailbox_state_changed"] == ["state", "state_changed_at"]
    with MailboxFlow(database_url, webhook_secret="s" * 32) as flow:
        kept = flow.store.insert_mailbox({"email": "kept@b.co", "state": State.PENDING.value})
        if prebuilt:
            with flow.store.engine.begin() as conn:
                conn.execute(sa.text(
                    "CREATE INDEX ix_mailbox_state_scan ON mailbox (state, state_changed_at, id)"))
    assert upgrade(database_url) == head_revision()
    indexes = _mailbox_indexes(database_url)
    assert indexes["ix_mailbox_state_scan"] == ["state", "state_changed_at", "id"]
    assert "ix_mailbox_state_changed" not in indexes
    assert diff(database_url) == []
    with MailboxFlow(database_url, webhook_secret="s" * 32) as flow:
        assert flow.get(kept.id).email == "kept@b.co"
