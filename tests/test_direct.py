"""The hot path's direct execution (prebuilt statements on the DBAPI cursor) against SQLAlchemy's path.

Both must store and read exactly the same values; instrumentation (a cursor-execution listener) must see
every statement, which it does because the store then runs everything through SQLAlchemy; errors keep
their types and leave no transaction or autocommit setting behind.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from mailbox_flow import InvalidTransition, MailboxFlow, MailiveryClient, State, StorageError
from mailbox_flow.models import utcnow
from mailbox_flow.store import MAILBOX, Finish, Store
from mailbox_flow.types import Mailbox, Source

from .helpers import SECRET


@contextmanager
def through_sqlalchemy(engine: Engine) -> Iterator[list[str]]:
    """Listen to cursor executions (as tracing does): the store then runs everything through SQLAlchemy."""
    seen: list[str] = []

    def listener(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def seed(store: Store, name: str, state: State = State.OAUTH_SENT) -> Mailbox:
    return store.insert_mailbox({"email": f"{name}@example.com", "state": state.value, "owner_id": "u1",
                                 "first_name": "Ann", "correlation_token": "tok"})


def comparable(mailbox: Mailbox) -> dict[str, Any]:
    """A snapshot without what differs between two mailboxes moved the same way."""
    data = dataclasses.asdict(mailbox)
    for key in ("id", "email", "created_at", "updated_at", "state_changed_at", "warmed_at", "intent_at",
                "lease_until", "campaign_id"):
        data.pop(key, None)
    return data


@pytest.fixture
def flow(database_url: str) -> Iterator[MailboxFlow]:
    f = MailboxFlow(database_url, webhook_secret="x" * 32)
    f.create_schema()
    yield f
    f.close()


def test_direct_path_is_on_by_default_and_off_under_a_listener(flow: MailboxFlow) -> None:
    direct = flow.store._direct
    assert direct.usable
    with through_sqlalchemy(flow.store.engine):
        assert not direct.usable
    assert direct.usable


def run_hot_path(flow: MailboxFlow, name: str, campaign_id: int) -> tuple[Mailbox, Mailbox]:
    """Expire one mailbox; claim another and move it with a lease owner and an extra column."""
    store = flow.store
    expired = flow.expire(seed(store, f"{name}-x").id, source=Source.RECONCILER)
    pending = seed(store, f"{name}-p")
    claimed = store.claim(pending, owner="w1", until=utcnow() + timedelta(seconds=30), trigger="start",
                          request_id=f"req-{name}")
    assert claimed is not None and claimed.intent_trigger == "start"
    moved = store.transition(claimed, to_state=State.PENDING, trigger="oauth_completed",
                             source=Source.WEBHOOK, request_id=f"req-{name}", detail={"k": [1, "é"]},
                             lease_owner="w1", values={"campaign_id": campaign_id})
    assert moved is not None
    return expired, moved


def test_both_paths_store_and_read_the_same_values(flow: MailboxFlow) -> None:
    """What one path writes, the other reads back identically (UUIDs, aware timestamps, JSON, enums)."""
    store = flow.store
    direct_expired, direct_moved = run_hot_path(flow, "direct", 101)
    with through_sqlalchemy(store.engine) as seen:
        plain_expired, plain_moved = run_hot_path(flow, "plain", 102)
        # the SQLAlchemy path reads what the direct path wrote
        assert store.get(direct_expired.id) == direct_expired
        assert store.get(direct_moved.id) == direct_moved
        direct_history = store.history(direct_moved.id)
    assert any("UPDATE mailbox" in s for s in seen)
    # the direct path reads what the SQLAlchemy path wrote
    assert store.get(plain_expired.id) == plain_expired
    assert store.get(plain_moved.id) == plain_moved
    assert comparable(direct_expired) == comparable(plain_expired)
    assert comparable(direct_moved) == comparable(plain_moved)
    assert direct_moved.campaign_id == 101 and direct_moved.state is State.PENDING
    assert direct_moved.state_changed_at.tzinfo is not None
    plain_history = store.history(plain_moved.id)
    assert [(e.trigger, e.from_state, e.to_state, e.source, e.detail) for e in direct_history] == [
        (e.trigger, e.from_state, e.to_state, e.source, e.detail) for e in plain_history
    ] == [("oauth_completed", State.OAUTH_SENT, State.PENDING, Source.WEBHOOK, {"k": [1, "é"]})]
    assert direct_history[0].request_id == "req-direct" and direct_history[0].at.tzinfo is not None


def test_deliveries_round_trip_on_both_paths(flow: MailboxFlow) -> None:
    store = flow.store
    body = b'{"x": "\xc3\xa9"}\x00\xff'
    first = store.insert_delivery({"dedupe_key": "k1", "event_type": "campaign.pending", "body": body,
                                   "status": "received", "campaign_id": 7})
    assert first is not None and first.body == body and first.received_at.tzinfo is not None
    assert store.insert_delivery({"dedupe_key": "k1", "body": b"again", "status": "received"}) is None
    mailbox_id = uuid.uuid4()
    store.finish_delivery(first.id, status="processed", outcome="started", mailbox_id=mailbox_id)
    store.touch_delivery(first.id)
    with through_sqlalchemy(store.engine):
        read = store.get_delivery_by_key("k1")
        second = store.insert_delivery({"dedupe_key": "k2", "body": b"two", "status": "received"})
        assert store.insert_delivery({"dedupe_key": "k2", "body": b"two", "status": "received"}) is None
    assert read is not None
    assert (read.body, read.status, read.outcome, read.mailbox_id, read.attempts, read.campaign_id) == (
        body, "processed", "started", mailbox_id, 1, 7)
    assert second is not None and store.get_delivery_by_key("k2") == second
    assert store.get_delivery_by_key("missing") is None


def test_cursor_listener_sees_every_statement_of_a_transition(flow: MailboxFlow) -> None:
    mailbox = seed(flow.store, "traced")
    with through_sqlalchemy(flow.store.engine) as seen:
        flow.expire(mailbox.id)
    text = "\n".join(seen)
    assert "FROM mailbox" in text and "UPDATE mailbox" in text and "INSERT INTO mailbox_transition" in text


def test_refused_transition_rolls_back_and_frees_the_connection(flow: MailboxFlow) -> None:
    """``decide`` raising inside the write transaction: nothing written, the next transition works."""
    store = flow.store
    pending = seed(store, "pending", State.PENDING)
    audit_rows = store.count("mailbox_transition")
    for _ in range(3):  # each attempt must have released the (pooled) connection's transaction
        with pytest.raises(InvalidTransition):
            flow.expire(pending.id)
    assert store.get(pending.id) == pending
    assert store.count("mailbox_transition") == audit_rows
    assert flow.expire(seed(store, "next").id).state is State.EXPIRED


@pytest.mark.postgres
def test_dropped_postgres_connection_is_a_storage_error_then_heals(postgres_url: str) -> None:
    flow = MailboxFlow(postgres_url, webhook_secret="x" * 32)
    flow.create_schema()
    mailbox = seed(flow.store, "dropped")
    engine = flow.store.engine
    with engine.connect() as conn:  # the pool's one connection, which the direct path reuses
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    admin = sa.create_engine(postgres_url)
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    with pytest.raises(StorageError):
        flow.get(mailbox.id)
    assert flow.get(mailbox.id) == mailbox  # the broken connection was invalidated, not reused
    flow.close()


@pytest.mark.postgres
def test_autocommit_does_not_leak_into_later_transactions(postgres_url: str) -> None:
    """The direct path's autocommit is undone: a later SQLAlchemy transaction can still roll back."""
    flow = MailboxFlow(postgres_url, webhook_secret="x" * 32)
    flow.create_schema()
    mailbox = seed(flow.store, "leak")
    assert flow.get(mailbox.id) == mailbox  # direct: autocommit on, then off again
    with flow.store.engine.connect() as conn:
        conn.execute(sa.update(MAILBOX).values(first_name="changed"))
        conn.rollback()
    assert flow.get(mailbox.id).first_name == "Ann"
    flow.close()


def test_in_list_statements_are_refused_for_direct_execution(flow: MailboxFlow) -> None:
    """An IN list would need expanding per execution: the direct path refuses it at compile time."""
    statement = sa.select(MAILBOX.c.id).where(MAILBOX.c.state.in_(["pending", "warming"]))
    with pytest.raises(ValueError, match="IN-list"):
        flow.store._direct.prepared(statement)


def test_find_active_by_email_on_both_paths(flow: MailboxFlow) -> None:
    store = flow.store
    active = seed(store, "active", State.PENDING)
    seed(store, "gone", State.EXPIRED)
    assert store.find_active_by_email("active@example.com") == active
    assert store.find_active_by_email("gone@example.com") is None
    with through_sqlalchemy(store.engine):
        assert store.find_active_by_email("active@example.com") == active
        assert store.find_active_by_email("gone@example.com") is None


def test_keyset_scan_pages_alike_on_both_paths(flow: MailboxFlow) -> None:
    """Pages of 2 over 7 mailboxes, 4 sharing one timestamp: every one once, in (changed_at, id) order."""
    store = flow.store
    mailboxes = [seed(store, f"scan{i}", State.PENDING) for i in range(7)]
    same = utcnow() - timedelta(hours=3)
    with store.engine.begin() as conn:
        for i, mailbox in enumerate(mailboxes):
            stamp = same if i < 4 else same + timedelta(minutes=i)
            conn.execute(sa.update(MAILBOX).where(MAILBOX.c.id == mailbox.id)
                         .values(state_changed_at=stamp))
    expected = sorted((store.get(m.id) for m in mailboxes), key=lambda m: (m.state_changed_at, m.id))
    cutoff = utcnow()
    direct = list(store.scan_state(State.PENDING, changed_before=cutoff, batch_size=2))
    with through_sqlalchemy(store.engine):
        plain = list(store.scan_state(State.PENDING, changed_before=cutoff, batch_size=2))
    assert direct == plain == expected
    assert list(store.scan_state(State.PENDING, changed_before=same, batch_size=2)) == []


@pytest.mark.postgres
def test_every_direct_statement_fits_psycopgs_conversion_cache(postgres_url: str) -> None:
    """psycopg converts (and caches) a query only up to a length: above it, every call re-parses it.

    Runs the webhook-free hot paths once, then checks every statement the direct path prepared.
    """
    from psycopg import _queries

    flow = MailboxFlow(postgres_url, webhook_secret="x" * 32)
    flow.create_schema()
    store = flow.store
    run_hot_path(flow, "sized", 7)
    flow.reject(seed(store, "rejected", State.PENDING).id)
    delivery = store.insert_delivery({"dedupe_key": "s1", "body": b"{}", "status": "received"})
    assert delivery is not None
    store.get_delivery_by_key("s1")
    claimed = store.claim(seed(store, "finishing", State.PENDING), owner="w", trigger="start",
                          until=utcnow() + timedelta(minutes=1), request_id="r")
    assert claimed is not None
    store.transition(claimed, to_state=State.WARMING, trigger="start", source=Source.WEBHOOK,
                     request_id="r", lease_owner="w", finish=Finish(delivery.id, "processed", "started"))
    list(store.scan_state(State.PENDING, changed_before=utcnow(), batch_size=1))
    prepared = [entry[1] for entry in store._direct._prepared.values()]
    assert len(prepared) >= 8
    too_long = [p.sql[:80] for p in prepared if len(p.sql) > _queries.MAX_CACHED_STATEMENT_LENGTH]
    assert too_long == []
    flow.close()


def test_pure_transition_by_id_outcomes(flow: MailboxFlow) -> None:
    """expire by id (one statement on PostgreSQL): moved and audited from the state it was read in,
    refused from a state it is not allowed from, refused while leased, not found; nothing half-written.
    """
    from mailbox_flow import ConcurrentUpdate, MailboxNotFound

    store = flow.store
    for state in (State.OAUTH_SENT, State.REQUESTED):
        mailbox = seed(store, f"from-{state.value}", state)
        moved = flow.expire(mailbox.id)
        assert (moved.state, moved.version) == (State.EXPIRED, mailbox.version + 1)
        [entry] = store.history(mailbox.id)
        assert (entry.trigger, entry.from_state, entry.to_state) == ("expire", state, State.EXPIRED)
    pending = seed(store, "still-pending", State.PENDING)
    leased = store.claim(seed(store, "leased"), owner="w9", until=utcnow() + timedelta(minutes=1),
                         trigger="send_oauth", request_id="r")
    assert leased is not None
    audit_rows = store.count("mailbox_transition")
    with pytest.raises(InvalidTransition):
        flow.expire(pending.id)
    with pytest.raises(ConcurrentUpdate):
        flow.expire(leased.id)
    with pytest.raises(MailboxNotFound):
        flow.expire(uuid.uuid4())
    assert store.get(pending.id) == pending and store.get(leased.id) == leased
    assert store.count("mailbox_transition") == audit_rows


def test_transition_finishes_its_delivery_only_when_it_moves(flow: MailboxFlow) -> None:
    """``finish``: the delivery is marked processed (linked to the mailbox) in the transition's write;
    when the guard fails, neither the mailbox nor the delivery changes.
    """
    store = flow.store
    delivery = store.insert_delivery({"dedupe_key": "f1", "body": b"{}", "status": "received"})
    assert delivery is not None
    mailbox = seed(store, "finish", State.PENDING)
    stale = dataclasses.replace(mailbox, version=mailbox.version + 5)
    finish = Finish(delivery.id, "processed", "started")
    assert store.transition(stale, to_state=State.REJECTED, trigger="reject", source=Source.API,
                            request_id=None, finish=finish) is None
    assert store.get_delivery_by_key("f1") == delivery
    moved = store.transition(mailbox, to_state=State.REJECTED, trigger="reject", source=Source.API,
                             request_id=None, finish=finish)
    assert moved is not None and moved.state is State.REJECTED
    done = store.get_delivery_by_key("f1")
    assert done is not None
    assert (done.status, done.outcome, done.mailbox_id, done.error) == (
        "processed", "started", mailbox.id, None)
    assert done.processed_at is not None and done.processed_at >= delivery.received_at


@pytest.mark.parametrize("where", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_unreachable_database_is_a_storage_error(where: str, tmp_path: Any) -> None:
    """A database that cannot be connected to at all (a SQLite file in a missing directory, a
    PostgreSQL port nobody listens on): every entry point raises StorageError, not the driver's error."""
    url = (f"sqlite:///{tmp_path}/missing/dir/x.db" if where == "sqlite"
           else "postgresql+psycopg://postgres@127.0.0.1:9/test?connect_timeout=2")
    flow = MailboxFlow(url, webhook_secret=SECRET)
    body = json.dumps({"type": "campaign.pending",
                       "account": {"campaign_id": 5, "email": "a@b.co"}}).encode()
    calls: list[Callable[[], object]] = [
        lambda: flow.get(uuid.uuid4()),
        lambda: flow.expire(uuid.uuid4()),
        lambda: flow.handle_webhook(body, SECRET),
        lambda: flow.accept_webhook(body, SECRET),
        lambda: flow.process_delivery(1),
        flow.store.ping,
    ]
    for call in calls:
        with pytest.raises(StorageError):
            call()
    flow.close()


def test_engines_on_the_same_kind_of_database_share_prepared_statements(tmp_path: Any) -> None:
    """A second engine (another flow, a test's fresh database) reuses the statements the first one
    compiled, as long as its dialect compiles them the same way; another dialect gets its own."""
    from mailbox_flow.store import _GET, _MAILBOX_COLS

    first = MailboxFlow(f"sqlite:///{tmp_path}/one.db", webhook_secret=SECRET)
    second = MailboxFlow(f"sqlite:///{tmp_path}/two.db", webhook_secret=SECRET)
    for flow in (first, second):
        flow.create_schema()
        flow.get(seed(flow.store, "shared").id)
    one, two = (flow.store._direct.prepared(_GET, columns=_MAILBOX_COLS) for flow in (first, second))
    assert one is two
    # a dialect that differs in what compilation depends on compiles its own
    second.store.engine.dialect.max_identifier_length += 1
    second.store._direct._prepared.clear()
    assert second.store._direct.prepared(_GET, columns=_MAILBOX_COLS) is not one
    assert second.get(second.list()[0].id).email == "shared@example.com"
    for flow in (first, second):
        flow.close()


def test_listing_and_history_on_both_paths(flow: MailboxFlow) -> None:
    """``mailboxes`` with every combination of its filters, and ``history``, return the same on the
    direct path as through SQLAlchemy, and honour each filter."""
    store = flow.store
    first = seed(store, "first", State.PENDING)
    second = seed(store, "second", State.PENDING)
    other = store.insert_mailbox({"email": "other@example.com", "state": "pending", "owner_id": "u2",
                                  "first_name": "O", "correlation_token": "t"})
    flow.expire(seed(store, "third").id)
    later = utcnow() + timedelta(seconds=1)
    queries: list[dict[str, Any]] = [
        {}, {"states": [State.PENDING]}, {"states": [State.PENDING, State.EXPIRED]}, {"owner_id": "u1"},
        {"states": [State.PENDING], "owner_id": "u1", "limit": 1},
        {"changed_before": later, "limit": 2}, {"changed_before": utcnow() - timedelta(days=1)},
        {"states": [State.WARMING]},
    ]
    direct = [store.mailboxes(**q) for q in queries]
    trails = [store.history(mb.id) for mb in store.mailboxes()]
    with through_sqlalchemy(store.engine) as seen:
        assert [store.mailboxes(**q) for q in queries] == direct
        assert [store.history(mb.id) for mb in store.mailboxes()] == trails
    assert seen
    assert [len(found) for found in direct] == [4, 3, 4, 3, 1, 2, 0, 0]
    assert direct[4] == [first] and direct[1] == [first, second, other]
    assert [entry.trigger for entry in trails[3]] == ["expire"]


def test_sql_logging_sees_every_statement_without_values(
    database_url: str, client: MailiveryClient, sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With SQLAlchemy's SQL logging on, every statement (the hot ones too) goes through SQLAlchemy
    and is logged, and no value is: OAuth URLs, correlation tokens and bodies stay out of the log."""
    import logging

    from .helpers import consent

    flow = MailboxFlow(database_url, client=client, webhook_secret=SECRET)
    flow.create_schema()
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    mailbox = flow.request_connection(owner_id="u", email="ada@contoso.com", first_name="Ada")
    body = consent(sim, mailbox)
    assert flow.handle_webhook(body, SECRET).outcome == "started"
    text = caplog.text
    assert "INSERT INTO mailbox " in text and "INSERT INTO webhook_delivery" in text, text
    assert "UPDATE mailbox" in text and "parameters hidden" in text, text
    assert mailbox.correlation_token and mailbox.oauth_url
    for secret in (mailbox.correlation_token, mailbox.oauth_url.split("?")[0], "ada@contoso.com"):
        assert secret not in text
    flow.close()
